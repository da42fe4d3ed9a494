"""What each job needs, computed from conf/ alone: peak memory (model, shuffle buffer, SAE grid and its
optimiser, per-step activations), FLOPs and so device-hours, and disk. Used three ways:

- before a run, `check_memory` prints the estimate and stops with a clear error when it cannot fit
  the device (GPU memory, or the RAM available on a CPU);
- the Snakefile derives each job's resources (mem_mb, runtime, CPUs, GPUs) from it, for cluster profiles
  (gatedsae.plan.scheduling);
- `python -m gatedsae estimate experiment=...` prints the table of the README's "Running at paper scale".

The numbers are estimates (stated assumptions below), meant to size jobs, not to replace profiling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gatedsae.plan.architectures import architecture, only, rescale_shift_base
from gatedsae.plan.config import Config, SAEGroupConfig
from gatedsae.plan.layout import HELDOUT_SPLITS

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GIB = 1024**3
# Sustained throughput assumed for device-hours: dense bf16 on an H100/H200-class GPU at ~40% of peak,
# and fp32 on CPUs from the benchmarks in results/benchmarks/ (2 cores: ~60 GFLOP/s).
SUSTAINED_FLOPS = {"cuda": 300e12, "cpu": 60e9}
# Tokenizing runs at ~1M tokens/s with a fast tokenizer (the default corpus: 7.5M tokens in 6.7 s on two
# cores); the token streams, the cut windows and their shuffled copy hold ~3 int32 copies of every token.
TOKENIZE_TOKENS_PER_S = 1e6
TOKENIZE_BYTES_PER_TOKEN = 3 * 4


@dataclass
class Estimate:
    job: str
    memory_bytes: float
    flops: float
    disk_bytes: float = 0.0
    breakdown: dict | None = None
    devices: int = 1  # accelerators the job holds (memory_bytes is the peak on any one of them)
    seconds: float = 0.0  # time outside the FLOP count (tokenizing)

    def hours(self, device: str, sustained_tflops: float | None = None) -> float:
        flops_per_s = sustained_tflops * 1e12 if sustained_tflops else SUSTAINED_FLOPS[
            "cuda" if device.startswith("cuda") else "cpu"]
        return (self.flops / flops_per_s + self.seconds) / 3600


# --- model ---------------------------------------------------------------------------------------------


def model_parameters(config: Config, layers: int | None = None) -> float:
    """Parameters of the LM (or of its first `layers` blocks, embeddings included): attention, MLP
    (gated MLPs have three matrices), embeddings and unembedding."""
    m = config.model
    attention = 4 * m.d_model * m.n_heads * m.d_head
    mlp = _mlp_matrices(config) * m.d_model * m.d_mlp
    blocks = m.n_layers if layers is None else layers
    return blocks * (attention + mlp) + 2 * m.d_vocab * m.d_model


def _mlp_matrices(config: Config) -> int:
    """Gated MLPs (Llama, SmolLM, Gemma) have three matrices; GPT-NeoX / GPT-2 style ones (Pythia) and
    the tiny random model have two."""
    m = config.model
    classic = m.source == "random" or any(family in m.hub_id.lower() for family in ("pythia", "gpt"))
    return 2 if classic else 3


def _forward_activation_bytes(config: Config, sequences: int) -> float:
    m, ctx = config.model, config.experiment.context_length
    per_token = 4 * (4 * m.d_model + 2 * m.d_mlp + m.n_heads * m.d_head)  # residual, MLP hidden, z (fp32)
    attention_scores = sequences * m.n_heads * ctx * ctx * 4
    return sequences * ctx * per_token + attention_scores


def prepare_estimate(config: Config) -> Estimate:
    """prepare_model: a packaged GGUF is read and dequantized to fp32 weights (both in memory at once);
    hub weights are only located, a random model only described."""
    if config.model.source != "package_gguf":
        return Estimate("prepare_model", 0.0, 0.0)
    weights = model_parameters(config) * BYTES["float32"]
    return Estimate("prepare_model", 2 * weights, 0.0, disk_bytes=weights)


def tokenize_estimate(config: Config) -> Estimate:
    """tokenize: every token the experiment reads (training and held-out) held in memory while it is cut
    into windows and shuffled."""
    tokens = config.cache.train_tokens + config.cache.heldout_tokens
    return Estimate("tokenize", tokens * TOKENIZE_BYTES_PER_TOKEN, 0.0, disk_bytes=tokens * BYTES["float32"],
                    seconds=tokens / TOKENIZE_TOKENS_PER_S)


def browse_estimate(config: Config, job: str = "browse") -> Estimate:
    """browse (and the study's pages, built the same way): the LM over held-out windows, one evaluation
    batch at a time (as evaluate, without the spliced SAEs' prefixes)."""
    m = config.model
    memory = model_parameters(config) * BYTES[m.dtype] + _forward_activation_bytes(config, config.evaluate.batch_windows)
    return Estimate(job, memory, 2 * model_parameters(config) * config.cache.heldout_tokens)


def interp_estimate(config: Config) -> Estimate:
    """interp: the LM over each held-out split's probing documents (probing.documents_per_source of each
    source, probing.tokens_per_document each) and over the first-letter prompts, for every site at once;
    then each Gated and baseline SAE encodes them (every one on the validation split, the matched pair of
    each seed on the test split). Memory: the model, the documents' activations at every site, one SAE's
    latents of them."""
    from gatedsae.plan.architectures import BASELINE, PROPOSED

    interp, m = config.interp, config.model
    splits = 2 if config.corpus.test_fraction is not None else 1
    sources = max(len(config.corpus.sources), 1)
    document_tokens = sources * interp.probing.documents_per_source * (interp.probing.tokens_per_document + 1)
    template_tokens = len(interp.absorption.template.split()) + 2
    word_tokens = interp.absorption.max_words * template_tokens
    pairs = [(site, layer) for site, layer in config.experiment.site_layer_pairs() if site in config.interp_sites]
    deepest = max([layer for _, layer in pairs], default=0) + 1
    forward = 2 * model_parameters(config, deepest) * (splits * document_tokens + word_tokens)
    seeds = int(getattr(config.train, "seeds", 1) or 1)
    encode, stored, widest = 0.0, 0.0, 0
    for site, _ in pairs:
        d = m.site_width(site)
        groups = [g for g in config.sweep.groups_at(site) if g.arch in (PROPOSED, BASELINE)]
        per_sae = [(architecture(g.arch).encoders, g.width(d)) for g in groups for _ in g.values]
        rows = document_tokens + interp.probing.token_rows + interp.absorption.max_words
        encode += sum(2 * rows * d * width * encoders for encoders, width in per_sae) * seeds
        encode += 2 * seeds * 2 * rows * d * max((w for _, w in per_sae), default=0) * 2  # the test split's pairs
        stored += (splits * document_tokens + word_tokens) * d * 4
        widest = max([widest, *[w for _, w in per_sae]])
    memory = model_parameters(config) * BYTES[m.dtype] + _forward_activation_bytes(config, interp.batch_sequences) \
        + stored + document_tokens * widest * 4
    return Estimate("interp", memory, forward + encode)


def cache_estimate(config: Config) -> Estimate:
    """The cache job: both splits, or (stream mode) the held-out split only."""
    streamed = config.cache.mode == "stream"
    tokens = (0 if streamed else config.cache.train_tokens) + config.cache.heldout_tokens
    deepest = max(config.experiment.all_layers) + 1
    weights = model_parameters(config) * BYTES[config.model.dtype]
    activations = _forward_activation_bytes(config, config.cache.batch_sequences)
    stores = sum(config.model.site_width(site) for site, _ in config.experiment.site_layer_pairs())
    return Estimate("cache", weights + activations, 2 * model_parameters(config, deepest) * tokens,
                    disk_bytes=tokens * stores * BYTES[config.cache.dtype],
                    breakdown={"model": weights, "activations": activations})


# --- SAE grids -----------------------------------------------------------------------------------------


def _sae_parameters(arch: str, width: int, d: int) -> float:
    return (architecture(arch).encoders + 1) * d * width + 4 * width + d


def train_estimate(config: Config, site: str, specs: list | None = None) -> Estimate:
    """A train job's SAEs `specs` (by default the whole grid at `site`: every knob value, every seed)."""
    from gatedsae.plan.grid import grid_specs

    d, train = config.model.site_width(site), config.train.at_site(site)
    specs = grid_specs(config, d, site) if specs is None else specs
    parameters = sum(_sae_parameters(s.arch, s.width, d) for s in specs)
    # parameters, gradients and Adam's two moments in fp32
    optimiser_state = 4 * parameters * 4
    # per SAE and step: pre-activations, features, masks and their gradients (~8 [B, width] fp32 tensors)
    step = sum(8 * train.batch_size * s.width * 4 for s in specs)
    buffer = 2 * train.buffer_rows * d * 4  # the mixing buffer and its permuted copy
    flops = sum(architecture(s.arch).train_flops_per_dw * d * s.width for s in specs) * train.tokens
    checkpoints = parameters * 4 * 4  # exported weights + the training state (params and Adam moments)
    return Estimate(f"train[{site}]", optimiser_state + step + buffer, flops, disk_bytes=checkpoints,
                    breakdown={"sae_grid_and_optimiser": optimiser_state, "step_activations": step,
                               "shuffle_buffer": buffer})


def rescale_shift_estimate(config: Config, site: str) -> Estimate:
    d, train = config.model.site_width(site), config.train.at_site(site)
    widths = [g.width(d) for g in config.sweep.variant_groups_at(site) if g.arch == rescale_shift_base()
              for _ in g.values for _ in range(train.seeds)]
    memory = lambda chunk: rescale_shift_memory(config, d, chunk)  # noqa: E731
    streamed = config.cache.mode == "stream"  # then it streams its own site's activations
    lm = stream_model_memory(config) if streamed and config.train_device(site) == config.cache.device else 0.0
    passes = [widths]
    if config.resources.device_memory_gib:
        passes = plan_passes(widths, memory, config.resources.device_memory_gib * GIB - lm)
    flops = sum(architecture(only("rescale_shift")).train_flops_per_dw * d * w for w in widths) * train.tokens
    job = f"rescale_shift[{site}]" + (f" in {len(passes)} passes" if len(passes) > 1 else "")
    if streamed:
        flops += stream_forward_flops(config, len(passes), [site])
    own_lm_device = streamed and config.train_device(site) != config.cache.device
    return Estimate(job, max(memory(chunk) for chunk in passes) + lm, flops,
                    disk_bytes=sum(2 * d * w * 4 * 2 for w in widths), devices=2 if own_lm_device else 1)


def all_tokens_estimate(config: Config, site: str) -> Estimate:
    """The every-token run's train job (sweep.all_tokens): the sweep's Gated and baseline groups again."""
    from gatedsae.plan.grid import all_tokens_config

    whole = train_job_estimate(all_tokens_config(config), site)
    return Estimate(whole.job.replace("train[", "train_all_tokens["), whole.memory_bytes, whole.flops,
                    whole.disk_bytes, whole.breakdown)


def evaluate_estimate(config: Config, site: str) -> Estimate:
    m, evaluate = config.model, config.evaluate
    d = m.site_width(site)
    n_saes = _saes_per_grid(config, site)
    widest = max(g.width(d) for g in config.sweep.groups_at(site))
    tokens = evaluate.windows_of(None, site) * config.experiment.context_length  # the largest split's (memory)
    logits = evaluate.batch_windows * config.experiment.context_length * m.d_vocab * 4 * 2
    # Every window's clean prefix is kept while the SAEs are evaluated one by one: the residual stream
    # at the splice point, and the site's activation where it is not the residual stream itself.
    prefixes = tokens * (m.d_model + (0 if site == "resid_post" else d)) * BYTES[m.dtype]
    memory = (model_parameters(config) * BYTES[m.dtype] + _forward_activation_bytes(config, evaluate.batch_windows)
              + logits + 3 * d * widest * 4 + prefixes)
    remainder = model_parameters(config) - model_parameters(config, min(config.experiment.layers_at(site)))
    # the remainder runs once per SAE and twice for the zero-ablation (with and without massive positions)
    per_token = 2 * model_parameters(config) + (n_saes + 2) * (2 * remainder + 4 * d * widest)
    # every held-out split (validation, test) has its own CE windows, evaluated one after the other
    windows = sum(evaluate.windows_of(split, site) for split in heldout_split_names(config))
    flops = windows * config.experiment.context_length * per_token
    return Estimate(f"evaluate[{site}]", memory, flops, breakdown={"prefixes": prefixes})


def heldout_split_names(config: Config) -> list[Optional[str]]:
    """The held-out splits every SAE is evaluated on: validation and test (corpus.test_fraction), or one."""
    return [None] if config.corpus.test_fraction is None else list(HELDOUT_SPLITS)


def _saes_per_grid(config: Config, site: str) -> int:
    """SAEs evaluated at `site`: the sweep's, its rescale-and-shift ones and its every-token run's, every seed."""
    from gatedsae.plan.grid import all_tokens_config

    baselines = sum(len(g.values) for g in config.sweep.variant_groups_at(site) if g.arch == rescale_shift_base())
    every_token = sum(len(g.values) for g in all_tokens_config(config).sweep.groups_at(site))
    per_seed = (sum(len(g.values) for g in config.sweep.groups_at(site)) + baselines * config.sweep.rescale_shift_at(site)
                + every_token * config.sweep.all_tokens_at(site))
    return per_seed * config.train.seeds


def aggregate_estimate(config: Config) -> Estimate:
    """The aggregate job's bootstrap (evaluation/intervals.py): per grid, the resampled
    window counts [B, W + S] and every SAE's replicates of four metrics [B, K] (every seed a row), kept
    for every grid; the readings add a Python loop over the B resamples (and the seed draws)."""
    resamples = config.intervals.resamples
    ce_windows = max(config.evaluate.windows_of(None, site) for site in config.experiment.sites)
    store_windows = math.ceil(config.cache.heldout_tokens / (config.experiment.context_length - 1))
    grids = [_saes_per_grid(config, site) for site, _ in config.experiment.site_layer_pairs()]
    per_grid = 8 * resamples * (ce_windows + store_windows + 3 * max(grids))  # counts, and ce() intermediates
    kept = 8 * resamples * 4 * sum(grids)  # replicates of every grid, four metrics
    flops = resamples * sum(2 * k * (ce_windows + store_windows) * 8 for k in grids)
    return Estimate("aggregate", per_grid + kept, flops, breakdown={"bootstrap_replicates": kept})


def study_analysis_estimate(config: Config) -> Estimate:
    """The study analysis' bootstrap and sign-flip test: [B, n] draws of the n rated pairs, at most
    `features_per_sae` per site (reporting/study.py, paired_comparison)."""
    pairs = config.study.features_per_sae * len(config.study_sites)
    memory = 8 * config.study.bootstrap * pairs * 4  # indices, flips, their products, the means
    return Estimate("study_analysis", memory, 4.0 * config.study.bootstrap * pairs)


def experiment_estimates(config: Config) -> list[tuple[Estimate, int]]:
    """(estimate, number of such jobs) for every job kind of the experiment that caches, trains or
    evaluates (the others only read and write files, or bootstrap tables: `aggregate_estimate`)."""
    return [(rule_estimate(config, rule, site), count) for rule, site, count in dag_jobs(config)
            if rule in COMPUTE_RULES]


def dag_jobs(config: Config) -> list[tuple[str, str | None, int]]:
    """(rule, site or None, number of jobs) of the experiment's DAG through its report, in order."""
    layers = len(config.experiment.layers)
    streamed = config.cache.mode == "stream"
    rows = [("prepare_model", None, 1), ("fetch_corpus", None, 1), ("tokenize", None, 1), ("cache", None, 1)]
    rows += [("train", None, layers)] if streamed else []
    for site in config.experiment.sites:
        layers = len(config.experiment.layers_at(site))  # (stream mode has no layers per site)
        rows += [] if streamed else [("train", site, layers)]
        rows += [("rescale_shift", site, layers)] if config.sweep.rescale_shift_at(site) else []
        rows += [("train_all_tokens", site, layers)] if config.sweep.all_tokens_at(site) else []
        rows.append(("evaluate", site, layers))
    from gatedsae.plan.interp import runs

    rows += [("interp", None, 1)] if runs(config) else []
    return rows + [(rule, None, 1) for rule in ("curves", "aggregate", "figures", "verdict", "report")]


def plan_passes(items: list, memory, available: float) -> list[list]:
    """Split `items` (SAEs to train, in sweep order) into passes over the data whose `memory(chunk)`
    fits `available` bytes: greedy, so the passes left after a finished one are the same and a killed
    run resumes. A single item that does not fit gets a pass of its own (and fails the memory check)."""
    passes, current = [], []
    for item in items:
        if current and memory(current + [item]) > available:
            passes.append(current)
            current = []
        current.append(item)
    if current:
        passes.append(current)
    return passes


def train_pass_memory(config: Config, site: str):
    """memory(chunk of SAESpecs) for `plan_passes` of a train job (store mode)."""
    return lambda chunk: train_estimate(config, site, chunk).memory_bytes


def rescale_shift_memory(config: Config, d: int, widths: list[int]) -> float:
    """Peak memory of rescale-and-shift SAEs of the given widths trained together (frozen baselines)."""
    train = config.train
    return sum(2 * (2 * d * w + 4 * w + d) * 4 + 8 * train.batch_size * w * 4 for w in widths) \
        + 2 * train.buffer_rows * d * 4


def _site_passes(config: Config, site: str, available: float) -> list[list]:
    from gatedsae.plan.grid import grid_specs

    return plan_passes(grid_specs(config, config.model.site_width(site), site), train_pass_memory(config, site),
                       available)


def train_job_estimate(config: Config, site: str) -> Estimate:
    """The train job (store mode) as it will run: memory of its largest pass, FLOPs of all of them."""
    whole = train_estimate(config, site)
    if not config.resources.device_memory_gib:
        return whole
    memory = train_pass_memory(config, site)
    passes = _site_passes(config, site, config.resources.device_memory_gib * GIB)
    largest = max(memory(chunk) for chunk in passes)
    return Estimate(f"{whole.job} in {len(passes)} passes" if len(passes) > 1 else whole.job, largest, whole.flops,
                    whole.disk_bytes, whole.breakdown)


def stream_model_memory(config: Config) -> float:
    """What streaming adds to a training job: the LM, one batch's forward, and the shards kept for the
    sites of a layer."""
    rows = config.cache.shard_sequences * (config.experiment.context_length - 1)
    widths = sum(config.model.site_width(site) for site in config.experiment.sites)
    kept = config.cache.stream_keep_shards * rows * widths * BYTES[config.cache.dtype]
    return (model_parameters(config) * BYTES[config.model.dtype]
            + _forward_activation_bytes(config, config.cache.batch_sequences) + kept)


def stream_forward_flops(config: Config, passes: int, sites: list[str] | None = None) -> float:
    """LM FLOPs of streamed training to the deepest layer: every pass over the data (as long as the
    longest budget of `sites`, by default the experiment's), plus the leading shards read once for the
    activation statistics."""
    statistics = config.train.statistics_tokens or config.cache.train_tokens
    budget = max(config.train.at_site(site).tokens for site in (sites or config.experiment.sites))
    tokens = passes * budget + statistics
    return 2 * model_parameters(config, max(config.experiment.all_layers) + 1) * tokens


def train_layer_estimate(config: Config) -> Estimate:
    """The train job (stream mode: one per layer): the LM and every site's grid, each site on its device
    (train.site_devices) with an equal share of what the LM leaves there; peak memory on the busiest
    device, FLOPs of the SAEs and of the forwards."""
    sites = config.experiment.sites
    lm = stream_model_memory(config)
    per_device = {config.cache.device: lm}
    flops = disk = 0.0
    rounds = 1
    for site in sites:
        device = config.train_device(site)
        whole = train_estimate(config, site)
        largest, passes = whole.memory_bytes, 1
        if config.resources.device_memory_gib:
            sharing = sum(config.train_device(other) == device for other in sites)
            share = (config.resources.device_memory_gib * GIB - (lm if device == config.cache.device else 0)) / sharing
            if share > 0:
                chunks = _site_passes(config, site, share)
                largest, passes = max(train_pass_memory(config, site)(chunk) for chunk in chunks), len(chunks)
        per_device[device] = per_device.get(device, 0.0) + largest
        flops, disk, rounds = flops + whole.flops, disk + whole.disk_bytes, max(rounds, passes)
    job = "train[" + ",".join(sites) + "]" + (f" in {rounds} passes" if rounds > 1 else "")
    return Estimate(job, max(per_device.values()), flops + stream_forward_flops(config, rounds), disk_bytes=disk,
                    breakdown={"model_and_streamed_shards": lm, "sae_grids": sum(per_device.values()) - lm},
                    devices=len(per_device))


def size_text(n_bytes: float) -> str:
    return f"{n_bytes / GIB:.2f} GiB" if n_bytes >= GIB / 10 else f"{n_bytes / 2**20:.1f} MiB"


# --- every rule ----------------------------------------------------------------------------------------

# Rules that run the LM or train SAEs (the others read and write files).
COMPUTE_RULES = ("cache", "train", "rescale_shift", "train_all_tokens", "evaluate", "interp")
# Rules sized by the experiment alone; `train` only in stream mode (one job per layer), else per site.
PER_EXPERIMENT = {"prepare_model": prepare_estimate, "tokenize": tokenize_estimate, "cache": cache_estimate,
                  "browse": browse_estimate, "study": lambda config: browse_estimate(config, "study"),
                  "aggregate": aggregate_estimate, "study_analysis": study_analysis_estimate,
                  "interp": interp_estimate}
PER_SITE = {"train": train_job_estimate, "rescale_shift": rescale_shift_estimate,
            "train_all_tokens": all_tokens_estimate, "evaluate": evaluate_estimate}


def sized_per_site(config: Config, rule: str) -> bool:
    """Whether one job of `rule` depends on its site (its width)."""
    return rule in PER_SITE and not (rule == "train" and config.cache.mode == "stream")


def rule_estimate(config: Config, rule: str, site: str | None = None) -> Estimate | None:
    """One job of a Snakefile rule (`site` for the rules sized per site); None for the rules that only
    read and write files."""
    if rule == "train" and config.cache.mode == "stream":
        return train_layer_estimate(config)
    if rule in PER_SITE:
        return PER_SITE[rule](config, site)
    return PER_EXPERIMENT[rule](config) if rule in PER_EXPERIMENT else None
