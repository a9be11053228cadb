"""Host islands: float ONNX nodes the ISA cannot compute, left to the host as one host op each.

SSD's L2 normalization (a square, a channel sum, a square root, a
reciprocal and products) has no NPU instruction (the ISA has no division), and
the reshapes and concatenations that gather SSD's head outputs into
``A×4``/``A×classes`` tensors move data across pixels. In a QDQ model these
nodes sit between a ``DequantizeLinear`` of an NPU tensor and ``QuantizeLinear``
nodes. The front end collects each connected group of them into an *island*:
the steps in graph order (QDQ pairs become fake quantization), the NPU tensors
it reads, the NPU tensors it writes back (quantized outputs that NPU ops
consume) and the float graph outputs it produces. Each island becomes one
host op with ``attrs["steps"]`` (evaluated by :mod:`tessera.host.hostops`) and
``io`` naming its NPU tensors; the back end places the ops that depend on a
written tensor in a later END-terminated segment (``docs/architecture.md``).
"""

from __future__ import annotations

import os

import numpy as np

from .ir import unsupported

__all__ = ["HostIslands", "HOST_ONLY_OPS"]

#: ops that only the host computes (no NPU instruction does any of them)
HOST_ONLY_OPS = ("ReduceSum", "ReduceL2", "Sqrt", "Reciprocal", "Div", "Pow", "Max", "Min", "LpNormalization")
_NPU_LAYERS = {"Conv", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool", "Relu", "Clip", "Pad"}
_MOVES = {"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Concat", "FakeQuant", "Const"}
_INT_RANGE = {"int8": (-128, 127), "uint8": (0, 255)}


def _json_attrs(a: dict) -> dict:
    out = {}
    for k, v in a.items():
        if isinstance(v, (int, float, str)):
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(e, (int, float)) for e in v):
            out[k] = list(v)
    return out


class HostIslands:
    """Mixin of the ONNX lowering (``frontend._Lowering``): builds islands while nodes are lowered."""

    def _init_islands(self):
        self.hostv = {}        # float (or fake-quantized) name -> island index
        self.islands = []      # {"steps": [(seq, step)], "reads": [], "q": {q name: tensor}, "outputs": [], "nodes": []}
        self.merged = {}       # island index -> island it was merged into
        self._seq = 0

    # ---- building ----------------------------------------------------------------------

    def _root(self, k):
        while k in self.merged:
            k = self.merged[k]
        return k

    def _island(self, names) -> int:
        ids = sorted({self._root(self.hostv[i]) for i in names if i in self.hostv})
        if not ids:
            self.islands.append({"steps": [], "reads": [], "q": {}, "outputs": [], "nodes": []})
            return len(self.islands) - 1
        k = ids[0]
        for j in ids[1:]:
            a, b = self.islands[k], self.islands[j]
            for key in ("steps", "reads", "nodes"):
                a[key] += b[key]
            a["q"].update(b["q"])
            self.merged[j] = k
        return k

    def _step(self, k, op, inputs, output, attrs=None):
        self._seq += 1
        self.islands[k]["steps"].append((self._seq, {"op": op, "inputs": list(inputs), "outputs": [output],
                                                     "attrs": attrs or {}}))
        self.hostv[output] = k

    def _dq_const(self, name):
        if name in self.consts:
            return np.asarray(self.consts[name])
        q, s, zp, axis = self.qconst[name]
        s, zp = np.asarray(s, np.float32), np.asarray(zp).astype(np.float32)
        shp = [1] * q.ndim
        if s.size > 1:
            shp[axis] = -1
        return ((q.astype(np.float32) - zp.reshape(shp if zp.size > 1 else ())) * s.reshape(shp if s.size > 1 else ()))

    def _host_in(self, k, name, n):
        if name in self.hostv:
            return name
        isl = self.islands[k]
        if name in self.consts or name in self.qconst:
            v = self._dq_const(name)
            self._step(k, "Const", [], name, {"value": v.tolist(), "dtype": str(v.dtype)})
            return name
        if name in self.fmap:
            if name not in isl["reads"]:
                isl["reads"].append(name)
            return name
        raise unsupported(n.name, n.op_type, f"input {name!r} that is neither a constant nor a quantized tensor",
                          "host ops on dequantized NPU tensors and constants")

    def is_host_node(self, n) -> bool:
        """Whether node ``n`` runs on the host (an island step)."""
        ins = [i for i in n.input if i]
        # A quantized island result (also in fmap) may feed the NPU's layers; a float one only the host.
        if any(i in self.hostv and (i not in self.fmap or n.op_type not in _NPU_LAYERS) for i in ins) \
                or n.op_type in HOST_ONLY_OPS:
            return True
        if n.op_type == "Mul":
            return sum(1 for i in ins if i not in self.consts and i not in self.qconst) == 2
        if n.op_type == "Concat":
            shape = self.shape(n.output[0], n)
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            return len(shape) != 4 or axis not in (1, -3)
        if n.op_type in ("Reshape", "Flatten", "Squeeze", "Unsqueeze") and ins[0] in self.fmap:
            shape = self.shapes.get(n.output[0])
            # The NPU keeps NCHW and NC tensors; other ranks (SSD's A×4 boxes) are host-side views.
            return shape is not None and len(shape) not in (2, 4)
        if n.op_type == "Transpose" and ins[0] in self.fmap:
            shape = list(self.g.tensors[self.fmap[ins[0]]].shape)
            perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), None)
            moved = [d for d in (perm or []) if shape[d] != 1]
            # NCHW → NHWC moves no data in the NPU's pixel-major layout, but the result is no NCHW tensor:
            # only a flatten into fully connected layers can read it (their weights absorb the order).
            if perm == [0, 2, 3, 1] and len(shape) == 4 and self.flattens_into_fc(n.output[0]):
                return False
            return moved != sorted(moved)
        return False

    def host_node(self, n, a):
        ins = [i for i in n.input if i]
        k = self._island(ins)
        env = [self._host_in(k, i, n) for i in ins]
        k = self._root(k)
        self.islands[k]["nodes"].append(n.name or n.output[0])
        self._step(k, n.op_type, env, n.output[0], _json_attrs(a))

    def host_quantize(self, n, s, zp, dt):
        """QuantizeLinear of a host value: fake quantization, and an int tensor NPU ops may read."""
        x, out = n.input[0], n.output[0]
        k = self._root(self.hostv[x])
        lo, hi = _INT_RANGE[dt]
        zp_src = zp + (128 if dt == "uint8" else 0)
        self._step(k, "FakeQuant", [x], out, {"scale": float(s), "zero_point": int(zp_src), "qmin": lo, "qmax": hi})
        self.new_tensor(out, self.shape(x, n), s, zp, dt)
        self.imap[out] = out
        self.islands[k]["q"][out] = out

    def host_dequantize(self, n):
        x, out = n.input[0], n.output[0]
        k = self._root(self.hostv[x])
        self._step(k, "Identity", [x], out)

    # ---- finishing -----------------------------------------------------------------------

    def finish_islands(self):
        """Turn the islands into host ops; register their NPU reads as outputs and writes as inputs."""
        ops = []
        for k, isl in enumerate(self.islands):
            if k in self.merged:
                continue
            steps = [st for _, st in sorted(isl["steps"], key=lambda t: t[0])]
            writes = [q for q, t in isl["q"].items() if self.g.consumers(t)]
            for q, t in isl["q"].items():
                if q not in writes and not self.g.is_output(t):
                    self.g.tensors.pop(t, None)
            for name in writes:
                self.g.inputs.append((name, isl["q"][name]))
            for name in isl["reads"]:
                self.g.outputs.append((name, self.fmap[name]))
            kinds = {st["op"] for st in steps}
            if {"ReduceSum", "Sqrt"} <= kinds or kinds & {"ReduceL2", "LpNormalization"}:
                kind = "L2Normalization"
            elif kinds <= _MOVES:
                kind = "Concat" if "Concat" in kinds else "Reshape"
            else:
                kind = "FloatOps"
            names = isl["nodes"]
            prefix = names[0] if len(names) == 1 else os.path.commonprefix(names)
            name = isl["outputs"][0] if isl["outputs"] else (prefix.rstrip("/_") or names[0]) if names else kind
            ops.append({"op": kind, "name": name,
                        "inputs": list(isl["reads"]), "outputs": isl["outputs"] + writes,
                        "attrs": {"steps": steps}, "io": list(isl["reads"]) + writes})
        self.g.host_ops[:0] = ops
