"""``ucf101`` (RGB + optical flow) and ``ucf101-three`` (+ RGB difference): UCF-101, 101 classes.

Layout under ``--data-root`` (paths overridable)::

    classInd.txt, trainlist0<s>.txt, testlist0<s>.txt   the official lists (in --ucf-list-dir), split
                                     s = --ucf-split (1-3); train lines 'Class/v_Class_gXX_cYY.avi <label>',
                                     test lines 'Class/v_Class_gXX_cYY.avi' (label from the class folder)
    rgb/<video>/frame_<k>.jpg        --ucf-rgb-dir: RGB frames (<video> = the list entry's file stem)
    flow_u/<video>/, flow_v/<video>/ --ucf-flow-u-dir / --ucf-flow-v-dir: TV-L1 flow as 8-bit grey jpgs,
                                     128 = no motion

Items (``--num-frames`` K = 3 positions, one per third of the clip, random within it when training):
``visual`` (K, 3, S, S) ImageNet-normalised RGB; ``flow`` (K, 2, S, S) stacked [u, v], each
``(x - 0.5) / 0.226`` of its [0, 1] grey value (a horizontal flip negates u: u -> 1 - u); and for
``ucf101-three`` ``rgb_diff`` (K, 3, S, S), the difference of the normalised RGB frames at positions p + 1
and p (p - 1 and p at the clip's last frame). Flow positions are the RGB positions scaled to the flow
clip's length (flow clips usually have one frame fewer). The same crop and flip apply to all three.

The paper initialises the UCF-101 encoders from ImageNet: pass ``--pretrained PATH`` (a local ResNet-18
state dict, e.g. torchvision's ``resnet18-f37072fd.pth``); nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fastshap_train.data._media import (
    MEDIA_OPTIONS,
    FrameTransform,
    MediaDataset,
    frame_positions,
    load_image,
    normalize_rgb,
    require_file,
    require_root,
)
from fastshap_train.data.base import DataFileError
from fastshap_train.registry import Option, register_dataset

EXPECTED = (
    "classInd.txt, trainlist0<s>.txt and testlist0<s>.txt, and per video rgb/<video>/, flow_u/<video>/ "
    "and flow_v/<video>/ frame folders"
)
FLOW_MEAN, FLOW_STD = 0.5, 0.226

OPTIONS = [
    Option(
        "ucf_split",
        1,
        "UCF-101 official train/test split (1-3)",
        check=lambda x: None if x in (1, 2, 3) else "must be 1, 2 or 3",
    ),
    Option("ucf_list_dir", ".", "UCF-101 folder of classInd.txt and the split lists, relative to --data-root"),
    Option("ucf_rgb_dir", "rgb", "UCF-101 folder of RGB frame folders"),
    Option("ucf_flow_u_dir", "flow_u", "UCF-101 folder of horizontal-flow (u) frame folders"),
    Option("ucf_flow_v_dir", "flow_v", "UCF-101 folder of vertical-flow (v) frame folders"),
]
_DEFAULTS = {o.name: o.default for o in OPTIONS}


def read_classes(path: Path) -> list:
    """Class names in index order from classInd.txt ('1 ApplyEyeMakeup' lines, numbered from 1)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataFileError(path, f"cannot be read: {exc}") from None
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataFileError(path, f"line {number}: expected '<index> <ClassName>', got {line.strip()!r}")
        entries.append((int(parts[0]), parts[1]))
    if [i for i, _ in entries] != list(range(1, len(entries) + 1)):
        raise DataFileError(path, "class indices must run 1, 2, ... in order")
    if not entries:
        raise DataFileError(path, "lists no class")
    return [name for _, name in entries]


def read_split(path: Path, classes: list) -> list:
    """[(video, label)] from a trainlist / testlist file; the label comes from the class folder."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataFileError(path, f"cannot be read: {exc}") from None
    out = []
    for number, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        entry = parts[0].replace("\\", "/")
        folder = entry.split("/")[0] if "/" in entry else None
        if folder not in classes:
            raise DataFileError(path, f"line {number}: {entry!r} is not under a class folder of classInd.txt")
        label = classes.index(folder)
        if len(parts) > 1 and (not parts[1].isdigit() or int(parts[1]) != label + 1):
            raise DataFileError(
                path,
                f"line {number}: label {parts[1]!r} disagrees with class folder {folder!r} "
                f"(index {label + 1} in classInd.txt)",
            )
        out.append((Path(entry).stem, label))
    return out


class UCF101(MediaDataset):
    name = "ucf101"

    def __init__(
        self,
        root,
        split="train",
        augment=False,
        three=False,
        image_size=224,
        num_frames=3,
        audio_frames=0,
        skip_bad=False,
        data_check="exists",
        **paths,
    ):
        super().__init__(split, augment, image_size, num_frames)
        del audio_frames  # shared option, no audio here
        paths = {**_DEFAULTS, **paths}
        self.three = bool(three)
        if self.three:
            self.name = "ucf101-three"
        self.modalities = ("visual", "flow", "rgb_diff") if self.three else ("visual", "flow")
        base = require_root(root, "UCF-101", EXPECTED)
        lists = base / paths["ucf_list_dir"]
        classes = read_classes(require_file(lists / "classInd.txt", "UCF-101", EXPECTED))
        self.class_names = classes
        self.num_classes = len(classes)
        kind = "train" if split == "train" else "test"
        entries = read_split(require_file(lists / f"{kind}list0{paths['ucf_split']}.txt", "UCF-101", EXPECTED), classes)
        self.dirs = {
            "rgb": base / paths["ucf_rgb_dir"],
            "u": base / paths["ucf_flow_u_dir"],
            "v": base / paths["ucf_flow_v_dir"],
        }
        self._require_dirs(self.dirs.values(), "UCF-101", EXPECTED)

        def verify(check, video):
            names = {key: check.frames(self.dirs[key] / video) for key in ("rgb", "u", "v")}
            if len(names["u"]) != len(names["v"]):
                raise DataFileError(
                    self.dirs["v"] / video,
                    f"has {len(names['v'])} frames, {self.dirs['u'] / video} has {len(names['u'])}",
                )
            return names

        self._scan(entries, verify, skip_bad, data_check)

    def __getitem__(self, i):
        i = int(i)
        video, names = self.ids[i], self.frame_names[i]
        rgb_names, n_rgb, n_flow = names["rgb"], len(names["rgb"]), len(names["u"])
        positions = frame_positions(n_rgb, self.num_frames, self.augment)
        rgb_dir = self.dirs["rgb"] / video
        images = {p: load_image(rgb_dir / rgb_names[p]) for p in positions}
        transform = FrameTransform(self.image_size, self.augment, images[positions[0]])

        def rgb(p):
            if p not in images:
                images[p] = load_image(rgb_dir / rgb_names[p])
            return normalize_rgb(transform(images[p]))

        item = {"visual": torch.stack([rgb(p) for p in positions])}
        flow = []
        for p in positions:
            q = round(p * (n_flow - 1) / max(1, n_rgb - 1))
            u = transform(load_image(self.dirs["u"] / video / names["u"][q], "L"))
            v = transform(load_image(self.dirs["v"] / video / names["v"][q], "L"))
            if transform.flip:
                u = 1.0 - u  # a mirrored video moves the other way horizontally
            flow.append((torch.cat([u, v]) - FLOW_MEAN) / FLOW_STD)
        item["flow"] = torch.stack(flow)
        if self.three:
            pairs = [(p, p + 1) if p + 1 < n_rgb else (max(p - 1, 0), p) for p in positions]
            item["rgb_diff"] = torch.stack([rgb(b) - rgb(a) for a, b in pairs])
        return self._item(i, item)

    def encoder_spec(self, modality):
        # The RGB difference is an RGB-like 3-channel map: the "visual" kind, which takes --pretrained too.
        return {"kind": "flow" if modality == "flow" else "visual"}

    def display_name(self, modality):
        return {"visual": "RGB", "flow": "optical flow [u, v]", "rgb_diff": "RGB difference"}[modality]


_HELP = "UCF-101, RGB + TV-L1 optical flow (3 frames each), 101 classes; ImageNet weights via --pretrained PATH"


@register_dataset("ucf101", options=OPTIONS, uses=MEDIA_OPTIONS, help=_HELP)
def build(root, split, augment=False, **options):
    return UCF101(root, split, augment, three=False, **options)


@register_dataset(
    "ucf101-three",
    uses=MEDIA_OPTIONS + tuple(_DEFAULTS),
    help="UCF-101-Three: ucf101 plus the RGB difference of consecutive frames (3 modalities)",
)
def build_three(root, split, augment=False, **options):
    return UCF101(root, split, augment, three=True, **options)
