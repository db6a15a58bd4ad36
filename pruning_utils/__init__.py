"""pruning_utils: shrink trained networks with matrix methods, and measure the result.

The library behind the book *Pruning Neural Networks with Matrix Methods*.
Dependencies point one way: ``validation`` and ``nnutils`` (argument checks, module-tree
helpers) <- ``linalg`` (pure functions on tensors) <- ``layers`` (modules built from
factors) <- ``surgery`` (model -> new model) <- ``methods`` (the method registry) <- the
experiment harness (``measure``, ``sweeps``, ``headline``, ``plots``, with ``data``,
``models``, ``train``, ``config``).
"""


from pruning_utils import results
from pruning_utils.budget import BudgetResult, LatencyTable, allocate_widths, latency_budget
from pruning_utils.config import (
    RunConfig,
    data_root,
    get_config,
    get_device,
    seed_everything,
    smoke_mode,
)
from pruning_utils.data import SPLITS, load_dataset, make_loader, train_val_split, validation_images
from pruning_utils.files import CorruptFileError
from pruning_utils.layers import (
    PROBABILITY_RULES,
    LowRankConv2d,
    LowRankLinear,
    RandomizedConv2d,
    RandomizedLinear,
    SpatialLowRankConv2d,
    spatial_weight_matrix,
)
from pruning_utils.linalg import (
    PCAResult,
    PivotedQR,
    PrincipalComponents,
    Spectrum,
    break_even_rank,
    conv2d_as_matmul,
    conv_break_even_rank,
    conv_weight_matrix,
    dkm_error_bound,
    dkm_expected_error,
    energy_kept,
    hmt_error_bound,
    interpolative_decomposition,
    low_rank_factors,
    pca,
    randomized_matmul,
    randomized_range_finder,
    randomized_svd,
    rank_for_energy,
    sampling_probabilities,
    spatial_break_even_rank,
    truncated_svd,
    whitened_low_rank_factors,
)
from pruning_utils.measure import (
    LatencyResult,
    break_even_report,
    compare_latency,
    count_flops,
    count_params,
    keep_freed_memory,
    machine_record,
    measure_latency,
    page_fault_probe,
    page_faults,
)
from pruning_utils.methods import (
    METHODS,
    Method,
    get_method,
    methods_for,
    most_compressed_within,
    register_method,
)
from pruning_utils.models import (
    MLP,
    MODEL_NAMES,
    LargeMLP,
    LeNet5,
    RMSNorm,
    SimpleMLP,
    SmallCNN,
    SmallResNet,
    VisionTransformer,
    build_model,
)
from pruning_utils.nnutils import capture_inputs, seeded
from pruning_utils.plots import (
    DENSE_COLOR,
    PALETTE,
    PRUNED_COLOR,
    axis_label,
    method_color,
    plot_pareto,
    plot_spectrum,
    plot_sweep,
    set_style,
)
from pruning_utils.stats import (
    Interval,
    accuracy_interval,
    correct_predictions,
    paired_difference_interval,
)
from pruning_utils.surgery import (
    PCA_METHODS,
    SCHEMES,
    ChannelGroup,
    GroupFit,
    HeadFit,
    LayerChange,
    LowRankFit,
    PruningReport,
    StreamFit,
    UnitFit,
    WidthFit,
    channel_groups,
    fold_batchnorm,
    group_prune,
    l1_structured_prune,
    load_pruned,
    low_rank,
    magnitude_prune,
    pca_prune,
    prune_heads,
    prune_units,
    randomize,
    save_pruned,
    slice_stream,
)
from pruning_utils.sweeps import summarize, sweep
from pruning_utils.train import (
    BOOK_RECIPES,
    TrainHistory,
    evaluate,
    fine_tune,
    train,
    train_or_load,
    trained_model,
    weights_path,
)

__version__ = "0.1.0"
