"""CODI (Shen et al. 2025): self-distillation from a CoT teacher into continuous thoughts, in one stage.

Teacher: the CoT pathway `[bos] Q CoT SEP Y eos` (DART's L_CoT). Student, the same model:
`[bos] Q <bot>`, K continuous thoughts (each the last hidden state through a projection MLP), `<eot> SEP Y eos`,
cross-entropy on the answer. The two are aligned at the token before the answer (z_N, the last separator token)
on every layer with DART's L_distill (L1 over the teacher's std, teacher detached), weighted by lambda:
L = L_teacher + L_student + lambda * L_distill. Inference: K thoughts, `<eot> SEP`, the answer. The projection is
not part of the base architecture: the export writes it beside the merged model.
"""

from __future__ import annotations

from dartlm.data.layout import build_pathway, pad_pathways
from dartlm.losses import answer_loss, cot_pathway_loss, distill_loss, distill_positions, gather_masked, teacher_spread
from dartlm.methods.base import forward
from dartlm.methods.coconut import LatentMethod, latent_prefix, latent_suffix
from dartlm.methods.dart import DartLoss, DartLossSettings, distillation_line
from dartlm.thinking.latent import PROJECTION_ATTRIBUTE, latent_batch, run_latent_pathway, thought_projection


def hidden_size(model) -> int:
    return model.get_input_embeddings().weight.shape[1]


class CodiMethod(LatentMethod):

    title = "CODI"
    description = (
        "It reasons in continuous thoughts distilled from a chain of thought: after `<bot>` its last hidden "
        "state, passed through a small projection (`latent_projection.safetensors`), becomes the next input a "
        "fixed number of times, then it reads `<eot>` and the separator and answers."
    )
    name = "codi"
    projection = True

    def __init__(self, config):
        super().__init__(config)
        self.loss_settings = DartLossSettings.from_config(config)

    def card_lines(self, config):
        return [distillation_line(config.method)]

    def student_parameters(self, model):
        """The thought projection: the only weights that the teacher (plain CoT) never runs."""
        return [p for p in getattr(model, PROJECTION_ATTRIBUTE).parameters() if p.requires_grad]

    def extend_model(self, model, tokenizer=None):
        projection = thought_projection(hidden_size(model)).to(next(model.parameters()).device)
        model.add_module(PROJECTION_ATTRIBUTE, projection)  # trains and is saved with the adapters

    def inference_thoughts(self) -> int:
        return self.config.num_thought_tokens

    def length(self, features):
        teacher = len(build_pathway(features.segments, None))
        student = len(latent_prefix(features)) + self.inference_thoughts() + len(latent_suffix(features, ()))
        return max(teacher, student)

    def loss(self, model, batch, backward=None, *, use_cache: bool = True):
        device = next(model.parameters()).device
        features = batch["features"]
        teacher_batch = {k: v.to(device) for k, v in pad_pathways(
            [build_pathway(f.segments, None) for f in features], batch["pad_token_id"]).items()}
        teacher = forward(model, teacher_batch, output_hidden_states=True)
        loss_teacher = cot_pathway_loss(teacher.logits, teacher_batch["input_ids"], teacher_batch["roles"])
        at_z_n = distill_positions(teacher_batch["roles"], teacher_batch["anchor"], "z_n")
        h_teacher = gather_masked(teacher.hidden_states, at_z_n)
        del teacher

        student_batch = latent_batch([latent_prefix(f) for f in features], [latent_suffix(f, ()) for f in features],
                                     batch["pad_token_id"], device)
        student = run_latent_pathway(model, student_batch, self.inference_thoughts(),
                                     getattr(model, PROJECTION_ATTRIBUTE), use_cache=use_cache)
        suffix = student_batch["suffix"]
        loss_student = answer_loss(student.logits, suffix["input_ids"], suffix["roles"])
        h_student = gather_masked(student.hidden_states, distill_positions(suffix["roles"], suffix["anchor"], "z_n"))
        loss_distill = distill_loss(h_teacher, h_student, detach_teacher=True)
        distill_term = self.loss_settings.distill_term(loss_distill, self.progress, lambda: self.student_parameters(model))
        total = loss_teacher + loss_student + distill_term
        terms = DartLoss(total, loss_teacher.detach(), loss_student.detach(), loss_distill.detach(),
                         teacher_spread(h_teacher), self.loss_settings.logged_weight(self.progress))
        return total, terms.logs()

