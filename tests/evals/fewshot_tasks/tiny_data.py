"""Tiny offline datasets for the few-shot task tests: sums as generation, and colours as multiple choice."""

import datasets

COLOURS = ["red", "green", "blue", "black"]


def sums(**_metadata):
    docs = [{"input": f"Q: What is {a} plus {b}?\nA:", "target": str(a + b), "targets": [str(a + b)]}
            for a in range(6) for b in range(6)]
    return {"train": datasets.Dataset.from_list(docs[:22]), "test": datasets.Dataset.from_list(docs[22:34])}


def colours(**_metadata):
    things = ["grass", "sky", "coal", "blood", "sea", "leaf", "night", "ruby", "lime", "ink", "cherry", "ocean",
              "tar", "frog", "sapphire", "tomato", "jade", "soot", "rose", "denim"]
    answer = {"grass": 1, "sky": 2, "coal": 3, "blood": 0, "sea": 2, "leaf": 1, "night": 3, "ruby": 0, "lime": 1,
              "ink": 3, "cherry": 0, "ocean": 2, "tar": 3, "frog": 1, "sapphire": 2, "tomato": 0, "jade": 1,
              "soot": 3, "rose": 0, "denim": 2}
    docs = [{"question": f"What colour is {thing}?", "choices": COLOURS, "label": answer[thing]} for thing in things]
    return {"train": datasets.Dataset.from_list(docs[:14]), "validation": datasets.Dataset.from_list(docs[14:])}
