"""`train-unisinger`: the trainer as a Prefect flow, so a training run can be started from the UI."""

from __future__ import annotations

from prefect import flow, get_run_logger

from singinghead.trainer.train import TrainConfig, train


@flow(name="train-unisinger", flow_run_name="train-{variant}")
def train_unisinger(data: str, out: str, config: str | None = None, variant: str = "unisinger",
                    max_steps: int | None = None, epochs: int | None = None, batch_size: int | None = None,
                    split: str = "train") -> dict:
    """Train UniSinger's 3D module (or the FaceFormer-style baseline) on the release at `data`;
    `config` is a YAML training config on the serving machine, the other parameters override it.
    A run folder that holds a checkpoint resumes."""
    cfg = TrainConfig.load(config, data=data, out=out, variant=variant, max_steps=max_steps, epochs=epochs,
                           batch_size=batch_size, split=split)
    result = train(cfg, progress=False)
    get_run_logger().info("%s steps; checkpoint %s", result["steps"], result["checkpoint"])
    return result
