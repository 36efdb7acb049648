#!/usr/bin/env python3
"""Write scikit-learn's digits as MNIST-shaped data (28×28 uint8 pixels) in Keras's .npz layout.

For measuring the 784-input network offline: MNIST itself needs a download, digits ships with
scikit-learn. Each 8×8 image (values 0–16) is enlarged 3× by pixel repetition to 24×24, padded by
2 pixels to 28×28 (MNIST's own 20×20-in-28×28 framing is similar) and scaled to 0–255.
The split is seeded and stratified: 80 % train, 20 % test (1,437 and 360 images).

--shifted-copies K appends, after the split, K copies of every image moved by 1 or 2 pixels
(fixed offsets, see SHIFTS), so that there are more MNIST-sized samples to time and verify on:
K = 5 gives 2,160 test images. This is AUGMENTED DIGITS, NOT MNIST: the copies are the same 1,797
handwritten digits again, so they add no new writers or shapes, and accuracy on them says little
beyond what the unshifted digits say. Copies of a test image stay in the test split (and of a
training image in the training split), so no test digit leaks into training. The 2-pixel frame
of zeros makes each shift exact: nothing of a digit is cut off.

    python scripts/make_digits28.py artifacts/digits28.npz
    bnpipe run --data artifacts/digits28.npz
    python scripts/make_digits28.py --shifted-copies 5 artifacts/digits28x6.npz
"""

import argparse

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

FRAME = 2  # zero pixels around the 24×24 digit; no shift may exceed it
# (rows, cols) offsets of the shifted copies, in the order they are appended.
SHIFTS = (
    (0, 1),
    (1, 0),
    (0, -1),
    (-1, 0),
    (1, 1),
    (-1, -1),
    (1, -1),
    (-1, 1),
    (0, 2),
    (2, 0),
    (0, -2),
    (-2, 0),
)


def shifted_copies(images: np.ndarray, copies: int) -> np.ndarray:
    """(n, 28, 28) → (n · (1 + copies), 28, 28): the images, then each shift of SHIFTS in turn.

    np.roll wraps, but only the zero frame wraps around (|shift| ≤ FRAME), so each copy is the
    digit moved exactly.
    """
    if not 0 <= copies <= len(SHIFTS):
        raise ValueError(f"copies must be 0..{len(SHIFTS)}, got {copies}")
    out = [images]
    for dr, dc in SHIFTS[:copies]:
        out.append(np.roll(images, (dr, dc), axis=(1, 2)))
    return np.concatenate(out)


def main(dest: str, copies: int = 0) -> None:
    d = load_digits()
    img = np.kron(d.images, np.ones((3, 3)))  # (n, 24, 24)
    img = np.pad(img, ((0, 0), (FRAME, FRAME), (FRAME, FRAME)))  # (n, 28, 28)
    x = np.clip(np.round(img * 255.0 / 16.0), 0, 255).astype(np.uint8)
    y = d.target.astype(np.uint8)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    x_tr, x_te = shifted_copies(x_tr, copies), shifted_copies(x_te, copies)
    y_tr, y_te = np.tile(y_tr, 1 + copies), np.tile(y_te, 1 + copies)
    np.savez_compressed(dest, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    what = f" ({copies} shifted copies each: augmented digits, not MNIST)" if copies else ""
    print(f"wrote {dest}: {len(x_tr)} train and {len(x_te)} test images of 28×28{what}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description="Write scikit-learn's 8×8 digits enlarged to 28×28 uint8 images as a .npz with "
        "x_train, y_train, x_test, y_test (MNIST's layout; not MNIST)."
    )
    ap.add_argument("dest", help="the .npz file to write")
    ap.add_argument(
        "--shifted-copies",
        type=int,
        default=0,
        metavar="K",
        help=f"append K (0..{len(SHIFTS)}) copies of every image shifted by 1-2 pixels, "
        "within its own split: AUGMENTED DIGITS, NOT MNIST (the same digits again); "
        "K=5 gives 2,160 test images [default: 0]",
    )
    args = ap.parse_args()
    if not 0 <= args.shifted_copies <= len(SHIFTS):
        ap.error(f"--shifted-copies must be 0..{len(SHIFTS)}, got {args.shifted_copies}")
    main(args.dest, args.shifted_copies)
