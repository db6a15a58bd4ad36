"""Model surgery: a trained model in, a smaller (or randomized) model out.

=========================  ===========================================================
``low_rank``               factorize every Linear / Conv2d by truncated SVD (Eckart–Young)
``LowRankFit``             the SVDs behind ``low_rank``, taken once, truncated at any setting
``pca_prune``              shrink hidden widths: the original Algorithm 2 (``"weights"``),
                           PCA of activations (Levin et al. 1993) or an interpolative
                           decomposition of activations (Chee et al. 2022)
``WidthFit``               the decompositions behind ``pca_prune``, taken once, truncated at
                           any setting
``randomize``              swap layers for sampled-product layers (Drineas et al. 2006)
``magnitude_prune``        baseline: zero the smallest weights (unstructured)
``l1_structured_prune``    baseline: drop the units / filters of smallest L1 norm (Li et al.)
``group_prune``            shrink the channels of networks with residual and concatenated
                           blocks, group by group (found by tracing with ``torch.fx``)
``GroupFit``               the trace and decompositions behind ``group_prune``, taken once
``channel_groups``         which channels additions and concatenations tie together
``fold_batchnorm``         merge eval-mode BatchNorm into the preceding Linear / Conv2d
``slice_stream``           transformer: rotate the residual stream onto its principal axes
                           and slice it (SliceGPT, Ashkboos et al. 2024)
``prune_heads``            transformer: keep attention heads chosen by interpolative
                           decomposition, correction folded into the output projection
``prune_units``            transformer: keep MLP hidden units by interpolative decomposition
``save_pruned``            save a recipe of the new structure plus the state dict
``load_pruned``            rebuild the structure (optionally on top of a base model) and load
=========================  ===========================================================

One file per idea: ``report`` (what a transform did), ``tree`` (finding, walking and
rebuilding layers), ``transform`` (the skeleton every transform runs through and the
per-layer-type table), ``factorize``, ``width``, ``groups``, ``randomize``, ``baselines``,
``transformer`` (the methods) and ``io`` (save and load). Every transform takes the
model, then the value that says how much to keep, then keyword-only ``data``,
``generator``, ``layers``, ``inplace``; works on a deep copy unless ``inplace=True``; and
attaches a :class:`PruningReport` to the
returned model as ``model.pruning_report``.
"""

from pruning_utils.surgery.baselines import l1_structured_prune, magnitude_prune
from pruning_utils.surgery.factorize import LowRankFit, low_rank
from pruning_utils.surgery.groups import (
    GROUP_CRITERIA,
    ChannelGroup,
    GroupFit,
    LayerUse,
    channel_groups,
    group_prune,
)
from pruning_utils.surgery.io import load_pruned, save_pruned
from pruning_utils.surgery.randomize import randomize
from pruning_utils.surgery.report import LayerChange, PruningReport
from pruning_utils.surgery.transform import LAYER_KINDS, SCHEMES, LayerKind, layer_kind
from pruning_utils.surgery.transformer import (
    HeadFit,
    StreamFit,
    TransformerParts,
    UnitFit,
    prune_heads,
    prune_units,
    slice_stream,
    transformer_parts,
)
from pruning_utils.surgery.width import PCA_METHODS, WidthFit, fold_batchnorm, pca_prune

__all__ = [
    "LayerChange",
    "PruningReport",
    "LowRankFit",
    "low_rank",
    "pca_prune",
    "WidthFit",
    "group_prune",
    "GroupFit",
    "ChannelGroup",
    "LayerUse",
    "channel_groups",
    "GROUP_CRITERIA",
    "randomize",
    "magnitude_prune",
    "l1_structured_prune",
    "fold_batchnorm",
    "slice_stream",
    "StreamFit",
    "prune_heads",
    "HeadFit",
    "prune_units",
    "UnitFit",
    "transformer_parts",
    "TransformerParts",
    "save_pruned",
    "load_pruned",
    "LAYER_KINDS",
    "LayerKind",
    "layer_kind",
    "SCHEMES",
    "PCA_METHODS",
]
