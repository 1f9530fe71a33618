"""Recurrent Parameter Generators: the method, usable without the training engine."""
from .apply import apply_rpg, cached, materialize, param_report, rings_of
from .compact import load_compact, save_compact
from .plan import SAMPLINGS, SCOPES
from .quant import quantize_ring
from .ring import Ring
from .sparsity import prune_ring, ring_masks, set_ring_masks

__all__ = ["apply_rpg", "cached", "materialize", "param_report", "rings_of", "save_compact",
           "load_compact", "quantize_ring", "prune_ring", "ring_masks", "set_ring_masks",
           "Ring", "SCOPES", "SAMPLINGS"]
