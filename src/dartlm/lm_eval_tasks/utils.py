"""Scoring for lm-eval tasks written by `dartlm lm-eval-task`: dartlm's own strict and flexible readings."""

from dartlm.eval.answers import score_answer


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    generated = results[0]
    # What the scorer reads before the generation, as `dartlm eval` scores it: the separator for models prompted
    # with it, nothing for models that write their reasoning (tasks written before `scored_prefix`: from `decode`).
    prefix = doc.get("scored_prefix")
    if prefix is None:
        prefix = "" if doc["decode"] == "cot" else f"{doc['separator']} "
    text = prefix + generated.strip()
    score = score_answer(doc["kind"], text, doc["target"], question=doc["question"], separator=doc["separator"])
    return {"strict": float(score.strict), "flexible": float(score.flexible)}
