"""Scoring for lm-eval tasks written by `dartlm lm-eval-task`: dartlm's own strict and flexible readings."""

from dartlm.eval.answers import score_answer


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    generated = results[0]
    # Answer-decoding models were prompted with the separator: score the text as if it were written out, as
    # `dartlm eval` does.
    text = generated.strip() if doc["decode"] == "cot" else f"{doc['separator']} {generated.strip()}"
    score = score_answer(doc["kind"], text, doc["target"], question=doc["question"], separator=doc["separator"])
    return {"strict": float(score.strict), "flexible": float(score.flexible)}
