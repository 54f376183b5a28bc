"""The Engram module against an unfused, loop-per-branch reference shaped like DeepSeek's demo,
prefill/decode parity, causality, and the multi-head table's offsets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from engramsim.backends.engram_module import EngramDecodeState, EngramModule, EngramTable
from engramsim.plugins.hashing.engram import EngramHashing, EngramHashSpec

HIDDEN, HC, HEADS, HEAD_DIM, MAX_NGRAM = 32, 4, 2, 8, 3
D_MEM = (MAX_NGRAM - 1) * HEADS * HEAD_DIM

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]


def make_module(dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0) -> EngramModule:
    module = EngramModule(HIDDEN, D_MEM, hc_mult=HC, max_ngram=MAX_NGRAM, generator=seed, device=device, dtype=dtype)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-trivial norm weights, so a mixed-up branch or norm shows
        for norm in (module.key_norm, module.query_norm, module.conv_norm):
            norm.copy_(torch.rand(norm.shape, generator=g) + 0.5)
    return module


def make_inputs(batch: int, length: int, dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, length, HC, HIDDEN, generator=g).to(device, dtype)
    e = torch.randn(batch, length, D_MEM, generator=g).to(device, dtype)
    return hidden, e


class ReferenceEngram(nn.Module):
    """The demo's Engram after the embedding lookup: separate projections, a loop over branches,
    nn.RMSNorm modules and a padded Conv1d cut to T."""

    def __init__(self, module: EngramModule) -> None:
        super().__init__()
        h, hc = module.hidden, module.hc_mult
        w, b = module.proj.weight.detach(), module.proj.bias.detach()
        self.value_proj = nn.Linear(module.d_mem, h)
        self.key_projs = nn.ModuleList([nn.Linear(module.d_mem, h) for _ in range(hc)])
        self.norm1 = nn.ModuleList([nn.RMSNorm(h) for _ in range(hc)])
        self.norm2 = nn.ModuleList([nn.RMSNorm(h) for _ in range(hc)])
        self.conv_norms = nn.ModuleList([nn.RMSNorm(h, eps=1e-5) for _ in range(hc)])
        kernel = module.conv.kernel_size[0]
        self.conv = nn.Conv1d(
            hc * h, hc * h, kernel, groups=hc * h, bias=False,
            padding=(kernel - 1) * module.dilation, dilation=module.dilation,
        )
        with torch.no_grad():
            self.value_proj.weight.copy_(w[:h])
            self.value_proj.bias.copy_(b[:h])
            for m in range(hc):
                rows = slice((1 + m) * h, (2 + m) * h)
                self.key_projs[m].weight.copy_(w[rows])
                self.key_projs[m].bias.copy_(b[rows])
                self.norm1[m].weight.copy_(module.key_norm[m])
                self.norm2[m].weight.copy_(module.query_norm[m])
                self.conv_norms[m].weight.copy_(module.conv_norm[m])
            self.conv.weight.copy_(module.conv.weight)
        self.hidden, self.hc = h, hc
        self.to(module.proj.weight.device, module.proj.weight.dtype)

    def gates(self, hidden_states: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        gates = []
        for m in range(self.hc):
            key = self.norm1[m](self.key_projs[m](e))
            query = self.norm2[m](hidden_states[:, :, m, :])
            s = (key * query).sum(dim=-1) / math.sqrt(self.hidden)
            s = s.abs().clamp_min(1e-6).sqrt() * s.sign()
            gates.append(s.sigmoid().unsqueeze(-1))
        return torch.stack(gates, dim=2)

    def short_conv(self, v: torch.Tensor) -> torch.Tensor:
        batch, length, hc, hidden = v.shape
        x = torch.cat([self.conv_norms[m](v[:, :, m, :]) for m in range(hc)], dim=-1)
        y = self.conv(x.transpose(1, 2))[..., :length]
        return nn.functional.silu(y).transpose(1, 2).reshape(batch, length, hc, hidden)

    def forward(self, hidden_states: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        v = self.gates(hidden_states, e) * self.value_proj(e).unsqueeze(2)
        return v + self.short_conv(v)


@torch.no_grad()
def test_matches_unfused_reference():
    module = make_module()
    reference = ReferenceEngram(module)
    hidden, e = make_inputs(3, 17)
    gates = reference.gates(hidden, e)
    assert (gates < 0.5).any() and (gates > 0.5).any()  # both signs of the signed sqrt are exercised
    torch.testing.assert_close(module(hidden, e), reference(hidden, e), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_short_conv_matches_reference_conv():
    module = make_module()
    reference = ReferenceEngram(module)
    v = torch.randn(2, 15, HC, HIDDEN, generator=torch.Generator().manual_seed(3))
    conv, state = module._short_conv(v, None)
    torch.testing.assert_close(conv, reference.short_conv(v), rtol=1e-5, atol=1e-5)
    assert state.conv_window.shape == (2, HC * HIDDEN, (4 - 1) * MAX_NGRAM)


@torch.no_grad()
def test_residual_adds_the_output():
    module = make_module()
    hidden, e = make_inputs(2, 5)
    torch.testing.assert_close(module.residual(hidden, e), hidden + module(hidden, e))


@torch.no_grad()
@pytest.mark.parametrize("length", [1, 5, 20])
def test_causal(length):
    module = make_module()
    hidden, e = make_inputs(2, 24)
    before = module(hidden, e)
    e2, hidden2 = e.clone(), hidden.clone()
    e2[:, length:] += 1.0
    hidden2[:, length:] += 1.0
    after = module(hidden2, e2)
    torch.testing.assert_close(after[:, :length], before[:, :length], rtol=0, atol=0)
    assert not torch.allclose(after[:, length], before[:, length])


@torch.no_grad()
def test_state_reaches_back_exactly_one_window():
    """A position's output depends on the (kernel-1)*dilation positions before it, no further."""
    module = make_module()
    hidden, e = make_inputs(1, 20)
    base = module(hidden, e)
    t = 15
    for back, changes in [(module.window, True), (module.window + 1, False)]:
        e2 = e.clone()
        e2[:, t - back] += 1.0
        changed = not torch.equal(module(hidden, e2)[:, t], base[:, t])
        assert changed == changes


PARITY = [
    pytest.param(torch.float32, dict(rtol=1e-5, atol=1e-5), id="fp32"),
    pytest.param(torch.bfloat16, dict(rtol=5e-2, atol=5e-2), id="bf16"),
]


@torch.no_grad()
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,tol", PARITY)
@pytest.mark.parametrize("prefix", [0, 3, 11])
def test_prefill_then_decode_matches_full_prefill(device, dtype, tol, prefix):
    module = make_module(dtype, device)
    hidden, e = make_inputs(3, 16, dtype, device)
    full = module(hidden, e)
    if prefix:
        out, state = module.prefill(hidden[:, :prefix], e[:, :prefix])
        outs = [out]
    else:
        state, outs = module.initial_state(3), []
    for t in range(prefix, hidden.shape[1]):
        out, state = module.step(hidden[:, t : t + 1], e[:, t : t + 1], state)
        outs.append(out)
    decoded = torch.cat(outs, dim=1)
    assert decoded.dtype == dtype and decoded.device.type == device
    torch.testing.assert_close(decoded, full, **tol)


@torch.no_grad()
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,tol", PARITY)
def test_chunked_prefill_matches_full_prefill(device, dtype, tol):
    module = make_module(dtype, device)
    hidden, e = make_inputs(2, 16, dtype, device)
    full, full_state = module.prefill(hidden, e)
    state: EngramDecodeState | None = None
    outs = []
    for start, stop in [(0, 2), (2, 9), (9, 16)]:  # a chunk shorter than the window, then longer
        out, state = module.prefill(hidden[:, start:stop], e[:, start:stop], state)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, **tol)
    torch.testing.assert_close(state.conv_window, full_state.conv_window, **tol)


def test_step_takes_one_token():
    module = make_module()
    hidden, e = make_inputs(1, 2)
    with pytest.raises(ValueError, match="one token"):
        module.step(hidden, e, module.initial_state(1))


def test_init_is_deterministic():
    a, b, c = (EngramModule(HIDDEN, D_MEM, generator=s) for s in (7, 7, 8))
    d = EngramModule(HIDDEN, D_MEM, generator=torch.Generator().manual_seed(7))
    for pa, pb, pc, pd in zip(a.parameters(), b.parameters(), c.parameters(), d.parameters()):
        assert torch.equal(pa, pb) and torch.equal(pa, pd)
    assert not torch.equal(a.proj.weight, c.proj.weight)
    t1 = EngramTable.create([5, 7], HEAD_DIM, generator=3)
    t2 = EngramTable.create([5, 7], HEAD_DIM, generator=3, dtype=torch.bfloat16)
    torch.testing.assert_close(t2.weight, t1.weight.to(torch.bfloat16), rtol=0, atol=0)


@needs_cuda
def test_same_seed_same_weights_on_cuda():
    cpu = EngramModule(HIDDEN, D_MEM, generator=5)
    cuda = EngramModule(HIDDEN, D_MEM, generator=5, device="cuda")
    for p, q in zip(cpu.parameters(), cuda.parameters()):
        assert q.device.type == "cuda" and torch.equal(p, q.cpu())


@pytest.mark.parametrize("device", DEVICES)
def test_table_lookup_uses_head_offsets(device):
    spec = EngramHashSpec(layer_ids=(1,), rows_per_head=(50, 50), max_ngram=3, heads=2, seed=0)
    hashing = EngramHashing(spec, compressed_vocab_size=1000, pad_id=2)
    primes = hashing.primes[1]
    assert len(set(primes.tolist())) == 4 and all(p >= 50 for p in primes)
    table = EngramTable.from_hashing(hashing, 1, HEAD_DIM, generator=0, device=device)
    assert table.weight.shape == (primes.sum(), HEAD_DIM) and table.d_mem == D_MEM
    assert table.offsets.tolist() == [0, primes[0], primes[:2].sum(), primes[:3].sum()]

    ids = np.random.default_rng(0).integers(0, 1000, size=(3, 12))
    row_ids = torch.from_numpy(hashing.hash(ids)[1])  # [B, T, H], per-head, before offsets
    row_ids[0, 0] = torch.from_numpy(primes - 1)  # each head's last row: must stay inside that head
    e = table.lookup(row_ids)
    assert e.shape == (3, 12, D_MEM) and e.device.type == device

    weight = table.weight.cpu()
    for k in range(4):
        head = e[..., k * HEAD_DIM : (k + 1) * HEAD_DIM].cpu()
        assert torch.equal(head, weight[int(primes[:k].sum()) + row_ids[..., k]])


def test_table_wraps_an_existing_tensor():
    weight = torch.arange(12 * 2, dtype=torch.float32).view(12, 2)
    table = EngramTable(weight, [0, 5])  # heads of 5 and 7 rows
    e = table.lookup(torch.tensor([[[4, 6]]]))
    assert e.tolist() == [[[8.0, 9.0, 22.0, 23.0]]]
    weight[4] = -1.0  # no copy: the table reads the caller's tensor
    assert table.lookup(torch.tensor([[[4, 0]]]))[0, 0, :2].tolist() == [-1.0, -1.0]
