"""Recurrent Parameter Generators: the method, usable without the training engine."""
from .apply import apply_rpg, cached, materialize, param_report, rings_of
from .compact import load_compact, save_compact
from .quant import prune_ring, quantize_ring, ring_masks, set_ring_masks
from .plan import SAMPLINGS, SCOPES
from .ring import Ring

__all__ = ["apply_rpg", "cached", "materialize", "param_report", "rings_of", "save_compact",
           "load_compact", "quantize_ring", "prune_ring", "ring_masks", "set_ring_masks",
           "Ring", "SCOPES", "SAMPLINGS"]
