"""Coverage-matrix zoo entries (see zoo.py for the conventions): tiny real diffusers classes."""

from __future__ import annotations

import torch

from .zoo import BATCH, TEXT_LEN, _entry, _latent, _t, _text  # noqa: F401
