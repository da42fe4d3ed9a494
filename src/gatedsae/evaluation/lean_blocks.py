"""The transformer blocks after a splice point, computed without TransformerLens' per-call overhead.

Per SAE the spliced evaluation runs the LM from the site to the last block. TransformerLens spends most
of that time outside the matmuls (profiled on SmolLM2 at its residual stream, 2 CPU cores): it
rearranges and copies every attention and MLP matrix at every call (`.T.contiguous()`, einops), expands
the grouped key/value heads with `repeat_interleave`, builds the attention pattern explicitly with a
mask, and runs its norms as five elementwise passes. `LeanBlocks` runs the same arithmetic from the same
parameters with the matrices laid out once (rebuilt when a parameter changes: a stage may cast them to
bf16), fused norms (`F.layer_norm`, `F.rms_norm`) and `F.scaled_dot_product_attention` (causal, grouped
heads natively). Its CE agrees with TransformerLens' to float32 rounding (tests/test_evaluate.py holds it
to 1e-5 nat on models of both kinds: LayerNorm + GELU + learned positions, RMSNorm + rotary + grouped
query attention + gated SiLU MLP).

Only the configurations it knows run here (`supports`); any other model runs TransformerLens' own
blocks, unchanged.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

NORMS = ("LN", "LNPre", "RMS", "RMSPre")


def supports(model) -> bool:
    """Whether `model` (a HookedTransformer) is one whose blocks `LeanBlocks` computes exactly as it does."""
    from transformer_lens.components import MLP, GatedMLP, TransformerBlock

    cfg = model.cfg
    plain = (not cfg.attn_only and not cfg.parallel_attn_mlp and not cfg.use_normalization_before_and_after
             and not cfg.use_attn_in and not cfg.use_split_qkv_input and not cfg.use_hook_mlp_in
             and not getattr(cfg, "load_in_4bit", False) and not getattr(cfg, "use_qk_norm", False)
             and getattr(cfg, "clip_qkv", None) is None and not getattr(cfg, "use_logn_attn", False)
             and not getattr(cfg, "use_dynamic_ntk_rope", False) and not getattr(cfg, "use_attention_sinks", False)
             and not getattr(cfg, "ungroup_grouped_query_attention", False)
             and not (getattr(cfg, "attn_scores_soft_cap", -1.0) or -1.0) > 0
             and not getattr(cfg, "use_local_attn", False) and cfg.attention_dir == "causal"
             and cfg.normalization_type in NORMS and cfg.positional_embedding_type in ("standard", "rotary")
             and not cfg.is_layer_norm_activation() and cfg.num_experts is None)
    if not plain:
        return False
    blocks = list(model.blocks)
    return all(type(block) is TransformerBlock and type(block.mlp) in (MLP, GatedMLP)
               and getattr(block.attn, "_attention_dir_override", None) in (None, "causal")
               and getattr(block.attn, "window_size", None) is None
               for block in blocks)


class LeanBlocks:
    """Blocks `start`.. of a supported HookedTransformer, from a residual stream [B, T, d] to the residual
    stream after the last block, plus the two splices inside a block that the sites need."""

    LAYOUTS_KEPT = 2  # a bf16 evaluation also runs a few positions with the float32 matrices: both stay laid out

    def __init__(self, model):
        self.model = model
        self._layouts: dict[tuple, list[dict]] = {}

    # -- the matrices, laid out once --------------------------------------------------------------------

    def _parameters_key(self) -> tuple:
        return tuple((p.data_ptr(), p._version, p.dtype) for p in self.model.blocks.parameters())

    def layers(self) -> list[dict]:
        key = self._parameters_key()
        if key not in self._layouts:
            while len(self._layouts) >= self.LAYOUTS_KEPT:
                self._layouts.pop(next(iter(self._layouts)))
            self._layouts[key] = [self._layout(block) for block in self.model.blocks]
        return self._layouts[key]

    @staticmethod
    def _layout(block) -> dict:
        """One block's matrices as F.linear wants them: queries, keys and values in one matrix (one matmul,
        sliced after), the gated MLP's gate and input likewise; biases that are all zero (SmolLM2 has
        none) left out, which changes no value."""
        attn, mlp = block.attn, block.mlp
        grouped = hasattr(attn, "_W_K")
        W_K, b_K = (attn._W_K, attn._b_K) if grouped else (attn.W_K, attn.b_K)
        W_V, b_V = (attn._W_V, attn._b_V) if grouped else (attn.W_V, attn.b_V)

        def heads_in(W):  # [heads, d_model, d_head] → F.linear's [(heads d_head), d_model]
            return W.detach().permute(0, 2, 1).reshape(-1, W.shape[1])

        heads, kv_heads, d_head = attn.W_Q.shape[0], W_K.shape[0], attn.W_Q.shape[2]
        gated = hasattr(mlp, "W_gate")
        qkv = torch.cat([heads_in(attn.W_Q), heads_in(W_K), heads_in(W_V)])
        mlp_in = (torch.cat([mlp.W_gate.T, mlp.W_in.T]) if gated else mlp.W_in.T).detach()
        if block.cfg.normalization_type == "RMS":  # the norm's weight folded into the matrix it feeds
            qkv = (qkv * block.ln1.w.detach()).to(qkv.dtype)
            mlp_in = (mlp_in * block.ln2.w.detach()).to(mlp_in.dtype)
        return {"qkv": qkv.contiguous(),
                "b_qkv": nonzero(torch.cat([attn.b_Q.reshape(-1), b_K.reshape(-1), b_V.reshape(-1)]).detach()),
                "split": (heads * d_head, kv_heads * d_head, kv_heads * d_head),
                "heads": heads, "kv_heads": kv_heads, "d_head": d_head, "scale": 1.0 / float(attn.attn_scale),
                "o": attn.W_O.detach().reshape(-1, attn.W_O.shape[-1]).T.contiguous(), "b_o": nonzero(attn.b_O.detach()),
                "attn": attn, "ln1": block.ln1, "ln2": block.ln2, "act": mlp.act_fn, "gated_mlp": gated,
                "mlp_in": mlp_in.contiguous(),
                "b_in": nonzero(mlp.b_in.detach()), "mlp_out": mlp.W_out.detach().T.contiguous(),
                "b_out": nonzero(mlp.b_out.detach())}

    # -- the arithmetic ---------------------------------------------------------------------------------

    def _norm(self, module, x: torch.Tensor) -> torch.Tensor:
        kind, shape = self.model.cfg.normalization_type, (x.shape[-1],)
        if kind.startswith("LN"):
            weight, bias = (module.w, module.b) if kind == "LN" else (None, None)
            return F.layer_norm(x, shape, weight, bias, module.eps)
        # RMS: x / sqrt(mean(x²) + eps), the mean from one fused norm pass; its weight is in the next matrix.
        mean_square = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square() / shape[0]
        return x * torch.rsqrt(mean_square + module.eps)

    def _rotary(self, attn, x: torch.Tensor) -> torch.Tensor:
        """TransformerLens' rotary embedding of x [B, T, heads, d_head], rotate-half form inlined (the same
        products and sum)."""
        cfg = self.model.cfg
        if cfg.rotary_adjacent_pairs or cfg.rotary_dim != x.shape[-1]:
            return attn.apply_rotary(x, 0, None)
        positions = x.shape[1]
        cos, sin = attn.rotary_cos[None, :positions, None, :], attn.rotary_sin[None, :positions, None, :]
        half = x.shape[-1] // 2
        return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin

    def z(self, layer: dict, residual: torch.Tensor) -> torch.Tensor:
        """The attention's z of one block, flattened [B, T, heads·d_head]."""
        batch, positions, _ = residual.shape
        qkv = F.linear(self._norm(layer["ln1"], residual), layer["qkv"], layer["b_qkv"])
        qkv = qkv.reshape(batch, positions, -1, layer["d_head"])  # [B, T, heads + 2 kv_heads, d_head]
        heads, kv_heads = layer["heads"], layer["kv_heads"]
        qk, v = qkv[:, :, : heads + kv_heads], qkv[:, :, heads + kv_heads :]
        if self.model.cfg.positional_embedding_type == "rotary":
            qk = self._rotary(layer["attn"], qk)  # queries and keys in one pass
        q, k, v = (part.transpose(1, 2) for part in (qk[:, :, :heads], qk[:, :, heads:], v.to(qk.dtype)))
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=layer["scale"], enable_gqa=heads != kv_heads)
        return z.transpose(1, 2).reshape(batch, positions, -1)

    def after_z(self, layer: dict, residual: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """resid_post of a block from its resid_pre and its attention's z."""
        resid_mid = residual + F.linear(z, layer["o"], layer["b_o"])
        return resid_mid + self.mlp(layer, resid_mid)

    def mlp(self, layer: dict, resid_mid: torch.Tensor) -> torch.Tensor:
        pre = F.linear(self._norm(layer["ln2"], resid_mid), layer["mlp_in"])
        if layer["gated_mlp"]:
            gate, linear = pre.chunk(2, dim=-1)
            hidden = layer["act"](gate) * linear
        else:
            hidden = layer["act"](pre if layer["b_in"] is None else pre + layer["b_in"])
        if layer["gated_mlp"] and layer["b_in"] is not None:
            hidden = hidden + layer["b_in"]
        return F.linear(hidden, layer["mlp_out"], layer["b_out"])

    def block(self, layer: dict, residual: torch.Tensor) -> torch.Tensor:
        return self.after_z(layer, residual, self.z(layer, residual))

    def run(self, residual: torch.Tensor, start: int) -> torch.Tensor:
        """The residual stream after the last block, from `residual` entering block `start`."""
        for layer in self.layers()[start:]:
            residual = self.block(layer, residual)
        return residual


def nonzero(bias: torch.Tensor) -> Optional[torch.Tensor]:
    """`bias`, or None where every entry is zero (adding it would change nothing)."""
    return None if not bool(bias.any()) else bias
