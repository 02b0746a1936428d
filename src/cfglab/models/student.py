"""The student of guidance distillation: the teacher's network, with its weights, and a w input."""

from __future__ import annotations

from typing import Optional, Sequence

from hydra.utils import instantiate
from torch import nn

from cfglab.checkpoints import Checkpoint
from cfglab.models.embeddings import check_guidance_range

TEACHER_ADVICE = "point teacher_ckpt at a checkpoint written by train.py"


def student_net(teacher_ckpt: str, image_size: int, in_channels: int, num_classes: int,
                guidance_range: Optional[Sequence[float]] = None) -> nn.Module:
    """The network of the checkpoint `teacher_ckpt` (its architecture from the stored config, its EMA weights) with
    a guidance input for w in `guidance_range` = [w_min, w_max] (conf/model/student.yaml).

    Stage one (a joint conditional/unconditional teacher): guidance_range is required; the new w embedding starts
    at zero, so the student first predicts the teacher's conditional output at every w (Meng et al. 2023,
    sec. 4.1). Stage two (a guidance-distilled teacher): guidance_range is the teacher's (null, or the same).
    image_size, in_channels, num_classes: the data's, as for any model; they must be the teacher's.
    """
    teacher = Checkpoint.open(teacher_ckpt, TEACHER_ADVICE)
    model = {k: v for k, v in teacher.config["model"].items() if k not in ("image_size", "in_channels", "num_classes")}
    theirs = check_guidance_range(model.get("guidance_range"))
    ours = check_guidance_range(guidance_range)
    if ours is None and theirs is None:
        raise ValueError(f"model.guidance_range is null and the teacher {teacher_ckpt!r} takes no w: give the range "
                         "of guidance strengths to distil, e.g. model.guidance_range=[0,4]")
    if ours is not None and theirs is not None and ours != theirs:
        raise ValueError(f"model.guidance_range={list(ours)}, but the teacher {teacher_ckpt!r} was distilled for "
                         f"{list(theirs)}: a progressive round keeps its teacher's range (null takes it)")
    model["guidance_range"] = list(ours or theirs)
    net = instantiate(model, image_size=image_size, in_channels=in_channels, num_classes=num_classes)
    if next(net.parameters()).is_meta:  # a configuration check builds on the meta device: no weights to load
        return net
    weights = teacher.net_weights()
    try:
        missing, unexpected = net.load_state_dict(weights, strict=False)
    except RuntimeError as e:
        raise ValueError(f"the network of teacher_ckpt={teacher_ckpt!r} does not fit data with image_size="
                         f"{image_size}, in_channels={in_channels}, num_classes={num_classes}: train the student on "
                         f"the teacher's data ({str(e).splitlines()[0]})") from e
    new = [k for k in missing if not k.startswith("guidance_emb.")]
    if new or unexpected:
        raise ValueError(f"teacher_ckpt={teacher_ckpt!r}: weights {sorted(new + unexpected)[:4]} do not match the "
                         f"network {model['_target_']} of its stored config")
    return net


def teacher_schedule(teacher_ckpt: str):
    """The noise schedule of the checkpoint `teacher_ckpt` (conf/schedule/teacher.yaml): a student is distilled at
    its teacher's noise levels."""
    return Checkpoint.open(teacher_ckpt, TEACHER_ADVICE).schedule()
