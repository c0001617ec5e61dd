"""Checking and loading preference games.

A game is a stack of preference matrices ``P`` of shape ``[prompts, n, n]`` with
``P[x, i, j] = P(y_i ≻ y_j | x)``. A valid matrix is square, finite, has entries in
[0, 1] and satisfies ``P + Pᵀ = 1`` (so the diagonal is 1/2).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

SYMMETRY_TOLERANCE = 1e-6


class GameError(ValueError):
    """A preference matrix or a file that holds one is invalid; the message says how to fix it."""


def _where(prompt: int, i: int, j: int, stacked: bool) -> str:
    return f"prompt {prompt}, entry [{i}, {j}]" if stacked else f"entry [{i}, {j}]"


def as_game(matrix, *, tolerance: float = SYMMETRY_TOLERANCE) -> np.ndarray:
    """Validate ``matrix`` and return it as a float64 stack ``[prompts, n, n]``.

    A single ``[n, n]`` matrix becomes a stack of one. Raises :class:`GameError` naming the
    first bad entry.
    """
    if np.iscomplexobj(matrix):
        if np.any(np.imag(matrix) != 0):
            raise GameError("preference matrix has complex entries with a non-zero imaginary part; "
                            "preferences are real probabilities P(row ≻ column)")
        matrix = np.real(matrix)
    try:
        game = np.asarray(matrix, dtype=np.float64)
    except OverflowError:
        raise GameError("preference matrix has a number too large for a float; entries are probabilities in "
                        "[0, 1]") from None
    except (TypeError, ValueError) as error:
        raise GameError(
            f"preference matrix is not numeric or its rows have different lengths ({error}); "
            "give a square matrix or a list of square matrices"
        ) from None
    stacked = game.ndim == 3
    if game.ndim == 2:
        game = game[None]
    if game.ndim != 3 or game.shape[1] != game.shape[2] or game.shape[1] == 0:
        raise GameError(
            f"preference matrix has shape {list(np.shape(matrix))}; expected a square [n, n] "
            "matrix or a stack [prompts, n, n] with n ≥ 1"
        )
    if game.shape[0] == 0:
        raise GameError("the game has no prompts; give at least one preference matrix")
    checks = (
        (~np.isfinite(game), "is {v}, not a finite number"),
        ((game < 0) | (game > 1), "is {v}, outside [0, 1]"),
    )
    for bad, message in checks:
        if bad.any():
            x, i, j = np.argwhere(bad)[0]
            raise GameError(
                f"{_where(x, i, j, stacked)} {message.format(v=game[x, i, j])}: "
                "preferences are probabilities P(row ≻ column)"
            )
    asymmetry = np.abs(game + game.transpose(0, 2, 1) - 1.0)
    if (asymmetry > tolerance).any():
        x, i, j = np.argwhere(asymmetry > tolerance)[0]
        raise GameError(
            f"{_where(x, i, j, stacked)}: P[{i},{j}] + P[{j},{i}] = "
            f"{game[x, i, j] + game[x, j, i]:.6g}, but must be 1 (within {tolerance:g}); "
            "a preference and its reverse must add up to one, and the diagonal must be 0.5"
        )
    return game


def load_game(path: str | Path) -> np.ndarray:
    """Read a game from ``.npy``, ``.csv`` (one matrix) or ``.json`` (a matrix or a list of them)."""
    path = Path(path)
    if not path.is_file():
        raise GameError(f"no such file: {path}; give the path of a .npy, .csv or .json matrix")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            matrix = np.load(path, allow_pickle=False)
        elif suffix == ".csv":
            with warnings.catch_warnings():  # an empty file: numpy warns, then as_game says what is wrong
                warnings.simplefilter("ignore", UserWarning)
                matrix = np.loadtxt(path, delimiter=",", ndmin=2)
        elif suffix == ".json":
            matrix = json.loads(path.read_text())
        else:
            raise GameError(f"{path}: unknown format '{suffix}'; use .npy, .csv or .json")
    except GameError:
        raise
    except RecursionError:
        raise GameError(f"{path}: JSON nested too deeply; give a matrix or a list of matrices") from None
    except EOFError:
        raise GameError(f"{path}: the file is empty or cut short; save the matrix again") from None
    except (ValueError, OSError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise GameError(f"{path}: cannot be read as a {suffix[1:]} matrix ({first_line})") from None
    try:
        return as_game(matrix)
    except GameError as error:  # the message names the file it is about
        raise GameError(f"{path}: {error}") from None
