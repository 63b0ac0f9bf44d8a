"""The runtime's float operators, in numpy (float32): im2col, convolution and linear layers in
float, pooling, the supported activations, BatchNorm and the input normalisation.

Exactness: elementwise operators (normalisation, ReLU, ReLU6, Hardtanh, LeakyReLU, max pooling,
the residual add, BatchNorm's ``x * a + b``) compute the same IEEE float32 operations as torch and
give the same bits; sums (matrix products, average pooling) and transcendental functions
(sigmoid, tanh) are float32 with another summation order or libm than torch's, so they agree
to rounding (the equivalence benchmark measures by how much).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def pad2d(x: np.ndarray, padding: tuple[int, int], value) -> np.ndarray:
    ph, pw = padding
    if not ph and not pw:
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def windows(x: np.ndarray, kernel, stride, dilation) -> np.ndarray:
    """(N, C, OH, OW, kh, kw) view of the (already padded) ``x``."""
    kh, kw = kernel
    dh, dw = dilation
    v = sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    return v[:, :, ::stride[0], ::stride[1], ::dh, ::dw]


def im2col(x: np.ndarray, kernel, stride, padding, dilation, pad_value=0,
           order: str = "hwc") -> tuple[np.ndarray, tuple[int, int]]:
    """Rows (N*OH*OW, K) of the convolution windows of (N, C, H, W) ``x``, and (OH, OW).

    ``order="hwc"``: each row in (kh, kw, C) order (a channels-last copy, then one strided
    copy per kernel offset: about 5x faster than the other order); the weight's columns are
    permuted to match at load (:func:`weight_columns`). ``order="chw"``: the order of
    ``weight.reshape(out, -1)`` itself (needed where a weight's scales are grouped along it).
    """
    n, c = x.shape[:2]
    oh, ow = out_hw(x.shape[2:], kernel, stride, padding, dilation)
    kh, kw = kernel
    if order == "chw":
        v = windows(pad2d(x, padding, pad_value), kernel, stride, dilation)
        return v.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw), (oh, ow)
    xp = np.ascontiguousarray(pad2d(x, padding, pad_value).transpose(0, 2, 3, 1))
    out = np.empty((n, oh, ow, kh, kw, c), x.dtype)
    for i in range(kh):
        for j in range(kw):
            h0, w0 = i * dilation[0], j * dilation[1]
            out[:, :, :, i, j, :] = xp[:, h0:h0 + (oh - 1) * stride[0] + 1:stride[0],
                                       w0:w0 + (ow - 1) * stride[1] + 1:stride[1], :]
    return out.reshape(n * oh * ow, kh * kw * c), (oh, ow)


def weight_columns(w: np.ndarray, order: str = "hwc") -> np.ndarray:
    """A conv weight (O, C, kh, kw) as (O, K) rows in the column order of :func:`im2col`."""
    if order == "chw" or w.ndim != 4:
        return w.reshape(w.shape[0], -1)
    return np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(w.shape[0], -1)


def out_hw(hw, kernel, stride, padding, dilation) -> tuple[int, int]:
    return tuple((hw[i] + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1
                 for i in range(2))


def rows_to_nchw(y: np.ndarray, n: int, hw) -> np.ndarray:
    """(N*OH*OW, C) rows back to (N, C, OH, OW)."""
    return np.ascontiguousarray(y.reshape(n, hw[0], hw[1], -1).transpose(0, 3, 1, 2))


def maxpool2d(x: np.ndarray, kernel, stride, padding, dilation, pad_value) -> np.ndarray:
    return windows(pad2d(x, padding, pad_value), kernel, stride, dilation).max(axis=(4, 5))


def avgpool2d(x: np.ndarray, kernel, stride, padding, count_include_pad: bool) -> np.ndarray:
    s = windows(pad2d(x, padding, 0.0), kernel, stride, (1, 1)).sum(axis=(4, 5),
                                                                     dtype=np.float32)
    if count_include_pad or not any(padding):
        return s / np.float32(kernel[0] * kernel[1])
    ones = np.ones((1, 1, *x.shape[2:]), np.float32)
    count = windows(pad2d(ones, padding, 0.0), kernel, stride, (1, 1)).sum(axis=(4, 5))
    return s / count


def adaptive_avgpool2d(x: np.ndarray, size) -> np.ndarray:
    """torch's bins: start = floor(i * H / out), end = ceil((i + 1) * H / out)."""
    n, c, h, w = x.shape
    out = np.empty((n, c, size[0], size[1]), np.float32)
    for i in range(size[0]):
        h0, h1 = (i * h) // size[0], -((-(i + 1) * h) // size[0])
        for j in range(size[1]):
            w0, w1 = (j * w) // size[1], -((-(j + 1) * w) // size[1])
            out[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3), dtype=np.float32)
    return out


def flatten(x: np.ndarray, start: int, end: int) -> np.ndarray:
    nd = x.ndim
    start, end = start % nd, end % nd
    return x.reshape(*x.shape[:start], -1, *x.shape[end + 1:])


def bn_affine(mean, var, weight, bias, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Eval BatchNorm as torch's CPU kernel computes it, ``x * a + b`` with
    ``a = weight / sqrt(var + eps)`` and ``b = bias - mean * a`` (float32): ``(a, b)``,
    computed once at load."""
    a = (weight / np.sqrt(var + np.float32(eps))).astype(np.float32)
    return a, (bias - mean * a).astype(np.float32)


def batchnorm(x: np.ndarray, affine: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``x * a + b`` over the channel axis 1, ``affine = bn_affine(...)``."""
    a, b = affine
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return x * a.reshape(shape) + b.reshape(shape)


def activation(x: np.ndarray, op: dict) -> np.ndarray:
    kind = op["op"]
    if kind == "relu":
        return np.maximum(x, np.float32(0))
    if kind == "relu6":
        return np.clip(x, np.float32(0), np.float32(6))
    if kind == "hardtanh":
        return np.clip(x, np.float32(op["min"]), np.float32(op["max"]))
    if kind == "sigmoid":
        return (np.float32(1) / (np.float32(1) + np.exp(-x))).astype(np.float32)
    if kind == "tanh":
        return np.tanh(x)
    if kind == "leaky_relu":
        return np.where(x > 0, x, x * np.float32(op["slope"])).astype(np.float32)
    raise ValueError(f"unknown activation {kind!r}")


ACTIVATIONS = ("relu", "relu6", "hardtanh", "sigmoid", "tanh", "leaky_relu")
