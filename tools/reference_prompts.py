"""The reference run's prompts (docs/reference_run.md): 600 short instructions, written here, not downloaded.

    python tools/reference_prompts.py          # writes docs/reference_run/prompts.jsonl (the committed file)

Provenance: no instruction set ships inside a package this environment's index offers (alpaca-eval and fschat
were looked at: their wheels hold configs and leaderboards, no prompts), so the prompts are made from the
TOPICS x TEMPLATES below, every pair once, shuffled with a fixed seed, and cut into fixed splits: 400 train,
100 validation (the system prompt was chosen on these only), 100 test. Each row: {"prompt", "split"}.
"""
import json
import os
import random

TOPICS = ["the moon", "rainbows", "volcanoes", "honey bees", "the ocean", "coffee", "bicycles", "photosynthesis",
          "the internet", "chess", "clouds", "earthquakes", "penguins", "bread", "the heart", "magnets", "deserts",
          "electricity", "trees", "the printing press", "glaciers", "vaccines", "music", "the Roman Empire",
          "sleep", "recycling", "tea", "airplanes", "gravity", "dinosaurs", "the human brain", "batteries",
          "libraries", "rivers", "the sun", "mushrooms", "elephants", "maps", "soap", "democracy", "snow",
          "telescopes", "cheese", "the Olympic Games", "wind turbines", "owls", "friendship", "mathematics",
          "the piano", "tides", "passwords", "rice", "the pyramids", "lightning", "cats", "compost",
          "solar panels", "languages", "the immune system", "money"]
TEMPLATES = ["Tell me about {t}.", "What is interesting about {t}?", "Explain {t} to a child.",
             "Why do people care about {t}?", "Give me a fun fact about {t}.", "Describe {t} in simple words.",
             "What should a beginner know about {t}?", "How would you explain {t} to a friend?",
             "What is one common misconception about {t}?", "Write a short note about {t}.",
             "What is the history of {t}, briefly?", "How does {t} affect everyday life?"]
SPLITS = (("train", 400), ("val", 100), ("test", 100))
PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "reference_run",
                    "prompts.jsonl")


def prompts(seed=0):
    """The 720 topic x template prompts shuffled by `seed`, the first 600 labelled with their split."""
    texts = [template.format(t=topic) for topic in TOPICS for template in TEMPLATES]
    random.Random(seed).shuffle(texts)
    rows = []
    for split, count in SPLITS:
        rows += [{"prompt": text[0].upper() + text[1:], "split": split} for text in texts[len(rows):len(rows) + count]]
    return rows


def read(split, path=PATH):
    """The rows of one split of the committed file."""
    with open(path) as f:
        return [r for r in map(json.loads, f) if r["split"] == split]


if __name__ == "__main__":
    os.makedirs(os.path.dirname(PATH), exist_ok=True)
    with open(PATH + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in prompts())
    os.replace(PATH + ".tmp", PATH)
    print(f"wrote {PATH}")
