"""The scoring actor of ``index --engine ray``.

Kept apart from :mod:`~sxai_plugins.scale.ray_index`: Ray Data ships the actor class by
reference, so each actor's fresh worker process imports this module, and every module it pulls
in is paid for in the job's start. Only NumPy, torch and :mod:`._ray` here; the model's and the
spaces' own modules come with their unpickling.
"""

from __future__ import annotations

import numpy as np
import torch

from ._ray import FaultDrill, Workers


class Scorer:
    """A Ray Data actor: the model and the spaces, loaded once, score batches of decoded images."""

    def __init__(self, payload: list, workers: Workers, fault_marker: str | None = None) -> None:
        import ray

        model, spaces = ray.get(payload[0]), ray.get(payload[1])
        torch.set_num_threads(workers.threads)
        self.device = torch.device(workers.device)
        self.model = model.to(self.device).eval()
        self.model.to(memory_format=torch.channels_last)
        self.spaces = spaces
        spaces.prepare(self.model)  # the pooled layers the spaces read, from the same pass
        self.classes = np.array(model.class_names, dtype=object)
        self.n_spaces = len(spaces.keys)
        self.drill = FaultDrill(fault_marker)

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.drill.tick()
        errors = batch["error"]
        ok = np.array([e == "" for e in errors], dtype=bool)
        n = len(errors)
        classes = np.full((n, len(self.classes)), np.nan)
        probabilities = np.full((n, self.n_spaces), np.nan)
        activations = np.full((n, self.n_spaces), np.nan)
        predicted = np.full(n, "", dtype=object)
        if ok.any():
            pixels = torch.from_numpy(np.ascontiguousarray(batch["image"][ok]))
            images = (
                pixels.to(self.device)
                .permute(0, 3, 1, 2)
                .float()
                .div(255.0)
                .contiguous(memory_format=torch.channels_last)
            )
            out = self.model(images)
            act = self.spaces.activations(out).cpu()
            probs = out.logits.float().softmax(dim=1).cpu()
            classes[ok] = probs.double().numpy()
            activations[ok] = act.double().numpy()
            probabilities[ok] = self.spaces.probabilities_from_activations(act).double().numpy()
            predicted[ok] = self.classes[probs.argmax(dim=1).numpy()]
        out_batch = {
            "path": batch["path"],
            "mtime_ns": batch["mtime_ns"],
            "size": batch["size"],
            "predicted": predicted,
            "error": errors,
        }
        out_batch |= {f"c{i}": classes[:, i] for i in range(classes.shape[1])}
        out_batch |= {f"p{i}": probabilities[:, i] for i in range(self.n_spaces)}
        out_batch |= {f"a{i}": activations[:, i] for i in range(self.n_spaces)}
        return out_batch
