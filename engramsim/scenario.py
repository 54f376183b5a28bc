"""The scenario: one YAML file says what model, hardware, workload and strategies to run.

Pydantic models with unknown keys forbidden; `load_scenario` turns every validation problem
into an InputError naming the file, the field path, the bad value and what was expected.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # one path component: no '/', no '..', no leading '.' or '-'
DTYPE_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0}
SCALE_BYTES = {"fp8": 1, "int8": 2}  # Engram rows: one scale per 32 values (fp8: a ue8m0 byte; int8: a bf16)


def field_error(loc: str | tuple[str, ...], value: Any, message: str) -> ValidationError:
    """A cross-field check's error located at the field to fix, not at the whole section.

    Raised inside a model validator, pydantic prefixes `loc` with the section's own path.
    """
    loc = (loc,) if isinstance(loc, str) else loc
    error = PydanticCustomError("value_error", "{message}", {"message": message})
    return ValidationError.from_exception_data("Scenario", [InitErrorDetails(type=error, loc=loc, input=value)])


class Strict(BaseModel):
    """Unknown keys are errors and numbers are finite: `.inf` or `.nan` in YAML never reaches a run."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Attention(Strict):
    """GQA (query heads sharing `kv_heads` K/V heads) or DeepSeek's MLA (multi-head latent
    attention: each token caches one compressed KV latent of `kv_lora_rank` plus a shared rotary
    key of `rope_head_dim`, which every head up-projects; `kv_heads` is then unused)."""

    kind: Literal["gqa", "mla"] = "gqa"
    heads: PositiveInt = Field(default=32, le=1024)
    kv_heads: PositiveInt = Field(default=8, le=1024, description="gqa: K/V heads shared by the query heads")
    head_dim: PositiveInt = Field(default=128, le=4096, description="gqa: q/k/v head dim; mla: the non-rotary q/k dim and the v dim")
    kv_lora_rank: PositiveInt = Field(default=512, le=1 << 16, description="mla: width of the compressed KV latent cached per token")
    rope_head_dim: PositiveInt = Field(default=64, le=4096, description="mla: rotary q/k dims per head; the key's is cached once per token")
    q_lora_rank: NonNegativeInt = Field(default=0, le=1 << 16, description="mla: width of the compressed query; 0: q projected from the hidden state")


class MoE(Strict):
    experts: PositiveInt = Field(le=65536)
    top_k: PositiveInt = Field(le=65536)
    shared_experts: NonNegativeInt = 0
    expert_intermediate: PositiveInt = Field(le=1 << 22)
    dense_layers: NonNegativeInt = Field(default=1, description="the first N blocks use the dense MLP")

    @model_validator(mode="after")
    def _top_k_fits(self) -> MoE:
        if self.top_k > self.experts:
            raise field_error("top_k", self.top_k, f"top_k ({self.top_k}) must be <= experts ({self.experts})")
        return self


class Backbone(Strict):
    layers: PositiveInt = Field(default=30, le=1000)
    hidden: PositiveInt = Field(default=2560, le=1 << 20)
    intermediate: PositiveInt = Field(default=6912, le=1 << 22, description="dense (SwiGLU) MLP width")
    attention: Attention = Attention()
    moe: MoE | None = None
    vocab: PositiveInt = Field(default=129280, le=1 << 24)
    dtype: Literal["bf16", "fp16", "fp8", "fp32"] = "bf16"
    hc_mult: PositiveInt = Field(default=1, le=64, description="mHC residual streams in every block (hyper-connections); 1: a plain residual")


class Engram(Strict):
    layers: list[NonNegativeInt] = Field(default_factory=lambda: [1], min_length=1, description="0-based block ids")
    max_ngram: int = Field(default=3, ge=2, le=8)
    heads: PositiveInt = Field(default=8, le=256, description="heads per n-gram order")
    head_dim: PositiveInt = Field(default=80, le=1024)
    rows_per_head: list[Annotated[int, Field(gt=0, le=1 << 36)]] = Field(
        default_factory=lambda: [2_262_400], description="one value, or one per order 2..max_ngram")
    dtype: Literal["bf16", "fp16", "fp8", "int8", "fp32"] = Field(
        default="bf16", description="table rows; fp8: e4m3 values + a ue8m0 scale per 32; int8: int8 values + a bf16 scale per 32")
    hc_mult: PositiveInt = Field(default=4, le=64, description="mHC branches")
    kernel_size: PositiveInt = Field(default=4, le=64)
    seed: NonNegativeInt = Field(default=0, le=(1 << 32) - 1)
    tokenizer: str | None = Field(default=None, description="tokenizer.json path; default: the DeepSeek V4 tokenizer")

    @field_validator("rows_per_head", mode="before")
    @classmethod
    def _scalar_rows(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) else value

    @field_validator("layers")
    @classmethod
    def _distinct(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"Engram layers must be distinct, got {value}")
        return sorted(value)

    @model_validator(mode="after")
    def _rows_per_order(self) -> Engram:
        if len(self.rows_per_head) not in (1, self.max_ngram - 1):
            raise field_error(
                "rows_per_head", self.rows_per_head,
                f"rows_per_head needs 1 or {self.max_ngram - 1} values (max_ngram {self.max_ngram}), got {len(self.rows_per_head)}",
            )
        return self

    @property
    def rows_per_order(self) -> tuple[int, ...]:
        rows = self.rows_per_head
        return tuple(rows * (self.max_ngram - 1) if len(rows) == 1 else rows)

    @property
    def heads_per_layer(self) -> int:
        return (self.max_ngram - 1) * self.heads

    @property
    def row_bytes(self) -> int:
        """Bytes of one head's row; quantised rows carry one scale per 32 values (backends/quantize.py)."""
        scale = -(-self.head_dim // 32) * SCALE_BYTES.get(self.dtype, 0)
        return int(self.head_dim * DTYPE_BYTES[self.dtype]) + scale

    @property
    def d_mem(self) -> int:
        return self.heads_per_layer * self.head_dim


class Model(Strict):
    backbone: Backbone = Backbone()
    engram: Engram = Engram()

    @model_validator(mode="after")
    def _engram_inside_backbone(self) -> Model:
        deepest = max(self.engram.layers)
        if deepest >= self.backbone.layers:
            raise field_error(
                ("engram", "layers"), self.engram.layers,
                f"Engram layer {deepest} is beyond the backbone's {self.backbone.layers} blocks (ids 0..{self.backbone.layers - 1})",
            )
        return self


TierRef = str | dict[str, Any]


class Node(Strict):
    """Several GPUs in one server sharing its host: each serves its own data-parallel replica (its own
    requests, drawn from the scenario's workload with its own seed), and they share the sockets' DRAM
    bandwidth and cores, the PCIe switches' uplinks and the socket interconnect (simulator/node.py)."""

    gpus: int = Field(default=1, ge=1, le=64, description="GPUs of the node, each serving its own replica")
    gpus_per_switch: int = Field(default=1, ge=1, le=64, description="GPUs behind one PCIe switch, sharing its uplink to the "
                                 "CPU (an x16 link of the profile's generation); a switch hangs off one socket, so a socket's "
                                 "last switch may hold fewer; 1: each GPU has its own root port")
    numa_nodes: int = Field(default=1, ge=1, le=8, description="sockets (NUMA nodes) of the host; GPUs are split evenly "
                            "across them in order; each holds the profile's host (host.* and socket.* are one socket's)")
    table_copies: Literal["per-node", "per-numa"] = Field(
        default="per-node", description="per-node: one copy of the tables, its pages interleaved over every socket's DRAM "
        "(a GPU reads the other sockets' share over the socket interconnect, at their latency); per-numa: a copy in each "
        "socket's DRAM (every read local; each socket must hold all the tables)")

    @property
    def shared(self) -> bool:
        """Whether anything is shared or remote: one GPU on one socket is the single-GPU model."""
        return self.gpus > 1 or self.numa_nodes > 1


def host_tables_bytes(dram_gib: float, node: Node | None) -> float:
    """Bytes of tables the host holds (`host.dram_gib` is one socket's): a copy interleaved over a
    node's sockets may fill all of them, a copy per socket (or one socket) must fit one."""
    sockets = node.numa_nodes if node is not None and node.table_copies == "per-node" else 1
    return dram_gib * (1 << 30) * sockets


def socket_of(gpu: int, node: Node) -> int:
    """The socket GPU `gpu` hangs off: GPUs split evenly across the sockets, in order."""
    return gpu * node.numa_nodes // node.gpus


def switch_of(gpu: int, node: Node) -> int:
    """The PCIe switch GPU `gpu` sits behind: each socket's GPUs, in order, fill its switches
    `gpus_per_switch` at a time; switches are numbered socket after socket."""
    switches = 0
    for socket in range(node.numa_nodes):
        on_socket = [g for g in range(node.gpus) if socket_of(g, node) == socket]
        if gpu in on_socket:
            return switches + on_socket.index(gpu) // node.gpus_per_switch
        switches += -(-len(on_socket) // node.gpus_per_switch)
    raise ValueError(f"GPU {gpu} is not in a node of {node.gpus}")


class Hardware(Strict):
    profile: str = Field(default="h800", description="preset name or profile YAML path")
    link: str | None = Field(default=None, description="link preset or file replacing the profile's link")
    cxl: TierRef | None = Field(default=None, description="CXL memory tier adding to or replacing the profile's: a tier "
                                "preset (cxl-...), a tier file, or a mapping of CXL fields with an optional 'preset' they override")
    nvme: TierRef | None = Field(default=None, description="NVMe tier adding to or replacing the profile's: a tier preset "
                                 "(nvme-...), a tier file, or a mapping of NVMe fields with an optional 'preset' they override "
                                 "(e.g. {preset: nvme-gen5-9550, drives: 4})")
    pinned_allocation: Literal["registered", "caching"] = Field(
        default="registered", description="how the serving engine pins the host tables: registered in place (cudaHostRegister, "
        "as the CUDA backend does: no overhead), or through torch's caching host allocator (pin_memory=True), which rounds each "
        "table's allocation up to a power of two; host DRAM is checked against the rounded bytes")
    node: Node | None = Field(default=None, description="several GPUs sharing one host (simulator only); null: one GPU "
                              "with the host to itself")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"profile": value} if isinstance(value, str) else value

    @model_serializer(mode="wrap")
    def _omit_unset_tiers(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Unset tiers and node and the default allocation are left out, so scenarios without them dump as
        they did before either existed."""
        data: dict[str, Any] = handler(self)
        for key in ("cxl", "nvme", "node"):
            if data.get(key) is None:
                data.pop(key, None)
        if data.get("pinned_allocation") == "registered":
            data.pop("pinned_allocation", None)
        return data


class Distribution(Strict):
    dist: Literal["uniform", "fixed"] = "uniform"
    low: PositiveInt | None = Field(default=None, le=1 << 24)
    high: PositiveInt | None = Field(default=None, le=1 << 24)
    value: PositiveInt | None = Field(default=None, le=1 << 24)

    @model_validator(mode="after")
    def _complete(self) -> Distribution:
        if self.dist == "fixed" and self.value is None:
            raise field_error("value", None, "a fixed distribution needs 'value'")
        if self.dist == "uniform":
            if self.low is None or self.high is None:
                raise field_error("low" if self.low is None else "high", None, "a uniform distribution needs 'low' and 'high'")
            if self.low > self.high:
                raise field_error("low", self.low, f"low ({self.low}) must be <= high ({self.high})")
        return self

    @property
    def max(self) -> int:
        return int(self.value if self.dist == "fixed" else self.high)  # type: ignore[arg-type]


class Arrival(Strict):
    kind: Literal["offline", "poisson"] = Field(default="offline", description="offline: every request waits at t=0")
    rate_per_s: float | None = Field(default=None, ge=1e-6, le=1e9, description="requests per second")

    @model_validator(mode="after")
    def _rate(self) -> Arrival:
        if self.kind == "poisson" and self.rate_per_s is None:
            raise field_error("rate_per_s", None, "poisson arrival needs 'rate_per_s'")
        return self


class Batching(Strict):
    max_num_seqs: PositiveInt = Field(default=512, le=1 << 20)
    max_num_batched_tokens: PositiveInt = Field(default=16384, le=1 << 24)


class Workload(Strict):
    trace: str = Field(default="cpython-docs", description="shipped trace name or .npz path")
    requests: PositiveInt = Field(default=64, le=100_000_000)
    prompt_len: Distribution = Distribution(dist="uniform", low=100, high=1024)
    output_len: Distribution = Distribution(dist="uniform", low=100, high=1024)
    arrival: Arrival = Arrival()
    batching: Batching = Batching()
    wrap_trace: bool = Field(default=False, description="let a request's window run past the trace's end and continue "
                             "from its start; otherwise a trace shorter than the longest prompt + output is refused")


class StrategyChoice(Strict):
    """One plugin by its registered name, with its params (checked by the plugin's params model)."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class Strategies(Strict):
    scheduler: StrategyChoice = StrategyChoice(name="nano-vllm")
    hashing: StrategyChoice = StrategyChoice(name="engram")
    placement: StrategyChoice = StrategyChoice(name="all-host")
    cache: StrategyChoice = StrategyChoice(name="none")
    prefetch: StrategyChoice = StrategyChoice(name="layer-ahead")
    transport: StrategyChoice = StrategyChoice(name="staged")


class Outputs(Strict):
    steps_csv: bool = True
    timeline: bool = True
    plot: bool = True


class Run(Strict):
    backend: Literal["sim", "cpu", "cuda"] = "sim"
    seed: NonNegativeInt = Field(default=0, le=(1 << 32) - 1)
    max_steps: PositiveInt | None = Field(default=None, le=(1 << 31) - 1, description="stop after this many steps (on a node, each GPU's)")
    baseline: bool = Field(default=True, description="also simulate all tables in HBM, for the overhead")
    outputs: Outputs = Outputs()


class Scenario(Strict):
    name: str = Field(pattern=SAFE_NAME, max_length=100,
                      description="names the run folder: letters, digits, '.', '_', '-'; starts with a letter or digit")
    description: str = ""
    model: Model = Model()
    hardware: Hardware = Hardware()
    workload: Workload = Workload()
    strategies: Strategies = Strategies()
    run: Run = Run()
