"""How good must a model's image comparison be before it beats easy-vqa's question prior on yes/no questions?

A yes/no answer can draw on two things: the question text (its training answers: "is there a red shape?" is
answered "no" 7 times in 8) and the comparison of the question with the image. Model the comparison as a signal
that is right with probability p on any question, whatever its text (p = 0.5: blind; p = 1: it sees). The best
answer from both is Bayes' rule, prior odds times the signal's likelihood ratio: the signal overturns the text only
where p / (1 - p) exceeds the text's odds. For each p this prints the expected yes/no accuracy of that best answer on
the demo's test questions (the evaluation's seeded sample), and the overall accuracy it gives beside the open
questions' score. Nothing is trained: it reads the data only.

    python -m experiments.easy_vqa_yes_no_bound --data runs/demo/data/easy-vqa --open-accuracy 0.917

What it tells: the image comparison a model needs (balanced accuracy, as the experiments with `align_balanced.json`
measure it) to reach the demo's targets, yes/no 10 points above the question prior and 0.85 overall.
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from wings.evaluation.runner import SEED
from wings.evaluation.vqa import easy_vqa_sample, easy_vqa_train_answers, load_easy_vqa, question_key

SIGNAL_ACCURACIES = (0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0)


def yes_share_by_question(folder: Path) -> dict[str, float]:
    """Each yes/no question text's share of "yes" among its training answers."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for _, question, answer in easy_vqa_train_answers(folder):
        if answer in ("yes", "no"):
            counts[question_key(question)][answer] += 1
    return {text: count["yes"] / (count["yes"] + count["no"]) for text, count in counts.items()}


def expected_accuracy(yes_share: float, answer: str, signal_accuracy: float) -> float:
    """Expected accuracy, on a question whose right answer is `answer`, of Bayes' answer from the text's yes share
    and a signal right with probability `signal_accuracy` (ties: "yes"). At 0.5 it is the question prior's answer."""
    accuracy = 0.0
    for signal in ("yes", "no"):
        # P(this signal | the answer is yes / no), and its chance given the right answer
        if_yes = signal_accuracy if signal == "yes" else 1 - signal_accuracy
        if_no = 1 - if_yes
        decision = "yes" if yes_share * if_yes >= (1 - yes_share) * if_no else "no"
        accuracy += (if_yes if answer == "yes" else if_no) * (decision == answer)
    return accuracy


def bound_table(folder: Path, limit: int, open_accuracy: float) -> dict[str, Any]:
    """For each signal accuracy: expected yes/no accuracy and overall accuracy on the seeded test sample."""
    questions = easy_vqa_sample(load_easy_vqa(folder), limit, SEED)
    shares = yes_share_by_question(folder)
    yes_no = [(shares.get(question_key(q.question), 0.5), q.answers[0]) for q in questions if q.kind == "yes/no"]
    open_count = len(questions) - len(yes_no)
    rows = []
    for p in SIGNAL_ACCURACIES:
        yes_no_right = sum(expected_accuracy(share, answer, p) for share, answer in yes_no)
        overall = (yes_no_right + open_accuracy * open_count) / len(questions)
        rows.append({"signal": p, "yes_no": 100 * yes_no_right / len(yes_no), "overall": 100 * overall})
    return {"questions": len(questions), "yes_no_questions": len(yes_no), "open_questions": open_count, "rows": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="`wings data easy-vqa` output (the demo's)")
    parser.add_argument("--limit", type=int, default=500, help="test questions, the evaluation's seeded sample")
    parser.add_argument("--open-accuracy", type=float, default=0.917, help="the open questions' score (0-1)")
    args = parser.parse_args(argv)
    if not 0 <= args.open_accuracy <= 1:
        parser.error(f"--open-accuracy is a fraction between 0 and 1, got {args.open_accuracy}")
    if args.limit < 1:
        parser.error(f"--limit is a number of test questions of at least 1, got {args.limit}")
    try:
        table = bound_table(args.data, args.limit, args.open_accuracy)
    except FileNotFoundError as error:  # no test or training file: say which and how to write it
        parser.error(str(error))
    if not table["yes_no_questions"]:
        parser.error(f"--data {args.data}: the {table['questions']} sampled test questions hold no yes/no question")
    print(
        f"{table['questions']} test questions ({table['yes_no_questions']} yes/no, {table['open_questions']} open, "
        f"open scored {100 * args.open_accuracy:.1f})"
    )
    print("| image comparison right (balanced) | yes/no, best with the question text | overall |")
    print("|---|---|---|")
    for row in table["rows"]:
        print(f"| {100 * row['signal']:.0f}% | {row['yes_no']:.1f} | {row['overall']:.1f} |")
    return table


if __name__ == "__main__":
    main()
