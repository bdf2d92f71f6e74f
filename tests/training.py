"""Set-up shared by the training tests: random example rows and a weight-snapshot callback."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

from PIL import Image
from transformers import TrainerCallback


def random_rows(
    rng: random.Random, n: int, offset: int, prompt: Callable[[int], str], max_images: int
) -> list[dict]:
    """n dataset rows (ids A<offset+i>) of 2..max_images flat-colour photos answering a brand."""
    from toolkit.dataset import example_row

    rows = []
    for i in range(n):
        images = [
            Image.new(
                "RGB",
                (rng.randint(32, 160), rng.randint(32, 160)),
                tuple(rng.randint(0, 255) for _ in range(3)),
            )
            for _ in range(rng.randint(2, max_images))
        ]
        answer = json.dumps({"attributes": {"brand": f"Acme {offset + i}", "color": "red"}})
        row = example_row(images, prompt(offset + i), answer)
        rows.append({"item_id": f"A{offset + i}", "category": "", **row})
    return rows


class Snapshots(TrainerCallback):
    """Copies the model's weights before and after training."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.after = {k: v.detach().clone() for k, v in model.state_dict().items()}
