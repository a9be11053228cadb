import hashlib
import json
import struct

import numpy as np
import pytest
from tessera.sim.handwritten import conv_relu_pool

from tessera.arch import PRESETS
from tessera.isa import INSTR_BYTES
from tessera.program import (
    FORMAT_VERSION,
    FORMAT_VERSION_PATCHES,
    MAGIC,
    Program,
    ProgramError,
    TensorInfo,
)


@pytest.fixture
def program():
    return conv_relu_pool(PRESETS["sim"])[0]


def _reseal(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


def _split(data: bytes):
    _, _, hlen = struct.unpack_from("<8sII", data)
    header = json.loads(data[16:16 + hlen])
    return header, data[16 + hlen:-32]


def _rebuild(header: dict, payload: bytes, version=FORMAT_VERSION) -> bytes:
    h = json.dumps(header).encode()
    return _reseal(struct.pack("<8sII", MAGIC, version, len(h)) + h + payload)


def test_program_round_trip(program, tmp_path):
    path = tmp_path / "p.tsp"
    program.save(path)
    back = Program.load(path)
    assert back.instructions == program.instructions
    assert back.constants == program.constants
    assert back.config == program.config
    assert back.inputs == program.inputs and back.outputs == program.outputs
    assert back.meta == program.meta


def test_program_rejects_flipped_byte(program):
    data = bytearray(program.to_bytes())
    data[len(data) // 2] ^= 0x40
    with pytest.raises(ProgramError, match="checksum mismatch"):
        Program.from_bytes(bytes(data))


@pytest.mark.parametrize("keep", [0, 10, 100, -1])
def test_program_rejects_truncation(program, keep):
    data = program.to_bytes()
    with pytest.raises(ProgramError, match="truncated|checksum"):
        Program.from_bytes(data[:keep] if keep >= 0 else data[:-1])


def test_program_rejects_other_files(program):
    with pytest.raises(ProgramError, match="not a Tessera program"):
        Program.from_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))


def test_program_rejects_future_version(program):
    header, payload = _split(program.to_bytes())
    with pytest.raises(ProgramError, match="format version 99 is not supported"):
        Program.from_bytes(_rebuild(header, payload, version=99))


def test_program_rejects_edited_config(program):
    header, payload = _split(program.to_bytes())
    header["config"]["rows"] = 32
    with pytest.raises(ProgramError, match="config hash .* does not match"):
        Program.from_bytes(_rebuild(header, payload))


def test_program_rejects_illegal_instruction_with_valid_checksum(program):
    header, payload = _split(program.to_bytes())
    payload = bytearray(payload)
    payload[3 * INSTR_BYTES] = 0x0F  # opcode 15 does not exist
    with pytest.raises(ProgramError, match="instruction 3: illegal opcode 15"):
        Program.from_bytes(_rebuild(header, bytes(payload)))


def test_program_rejects_section_outside_payload(program):
    header, payload = _split(program.to_bytes())
    header["sections"]["constants"][1] += 1
    with pytest.raises(ProgramError, match="section 'constants'"):
        Program.from_bytes(_rebuild(header, payload))


def test_program_rejects_missing_header_field(program):
    header, payload = _split(program.to_bytes())
    del header["prog_addr"]
    with pytest.raises(ProgramError, match="lacks field 'prog_addr'"):
        Program.from_bytes(_rebuild(header, payload))


def test_program_check_config_names_both_configs(program):
    with pytest.raises(ProgramError, match="built for config 'sim'.*NPU is 'arria10'"):
        program.check_config(PRESETS["arria10"])
    program.check_config(PRESETS["sim"].replace(name="same-hardware"))


def test_load_names_unreadable_file(tmp_path):
    with pytest.raises(ProgramError, match="cannot read"):
        Program.load(tmp_path / "missing.tsp")


@pytest.mark.parametrize("layout, shape", [("NCHW", [1, 3, 2, 5]), ("NHWC", [1, 2, 5, 3]), ("NC", [1, 3])])
def test_tensor_info_quantize_dequantize_round_trip(layout, shape):
    h, w = (1, 1) if layout == "NC" else (2, 5)
    t = TensorInfo("x", shape, layout, 0, h, w, 3, 16, 0.1, -3)
    q = np.random.default_rng(0).integers(-128, 128, size=shape)
    x = (q + 3) * 0.1
    img = t.quantize(x)
    assert img.shape == (h, w, 16) and (img[:, :, 3:] == -3).all()
    np.testing.assert_array_equal(np.rint(t.dequantize(img) / np.float32(0.1)) - 3, q)


def test_tensor_info_quantize_rejects_wrong_shape():
    t = TensorInfo("x", [1, 3, 2, 2], "NCHW", 0, 2, 2, 3, 16, 0.1, 0)
    with pytest.raises(ValueError, match=r"input 'x' has shape \[1, 3, 2\]"):
        t.quantize(np.zeros((1, 3, 2)))


def test_tensor_info_pad_and_space_to_depth_for_the_stem():
    # A 3-channel 6×6 image padded by (1, 1, 1, 1) and packed 2×2: 4×4 pixels of 12 (of 16) channels.
    t = TensorInfo("x", [1, 3, 6, 6], "NCHW", 0, 6, 6, 3, 16, 1.0, -5, pad=[1, 1, 1, 1], block=2)
    assert (t.stored_height, t.stored_width, t.nbytes) == (4, 4, 4 * 4 * 16)
    q = np.random.default_rng(0).integers(-128, 128, size=(1, 3, 6, 6))
    img = t.quantize((q + 5).astype(np.float32))
    padded = np.pad(q[0].transpose(1, 2, 0), ((1, 1), (1, 1), (0, 0)), constant_values=-5)
    for y in range(4):
        for x in range(4):
            for dy in range(2):
                for dx in range(2):
                    ch = (dy * 2 + dx) * 3
                    assert img[y, x, ch:ch + 3].tolist() == padded[2 * y + dy, 2 * x + dx].tolist()
    assert (img[:, :, 12:] == -5).all()


def test_tensor_info_rejects_untileable_space_to_depth():
    with pytest.raises(ProgramError, match="do not tile"):
        TensorInfo("x", [1, 3, 5, 5], "NCHW", 0, 5, 5, 3, 16, 1.0, 0, block=2)
    with pytest.raises(ProgramError, match="cpad 8"):
        TensorInfo("x", [1, 3, 4, 4], "NCHW", 0, 4, 4, 3, 8, 1.0, 0, block=2)


def test_tensor_info_patches_are_the_im2col_image_of_the_stem():
    # A 7x7/2 window over a 3-channel 9x11 image padded by (3, 3, 2, 2): each stored pixel is one output
    # pixel's receptive field, channels (dy, dx, c), 147 of 160 lanes; the last padded row no window reaches.
    t = TensorInfo("x", [1, 3, 9, 11], "NCHW", 0, 9, 11, 3, 160, 1.0, -5, pad=[3, 3, 2, 2], block=2, patch=[7, 7])
    assert (t.stored_height, t.stored_width, t.nbytes) == (4, 5, 4 * 5 * 160)
    q = np.random.default_rng(1).integers(-128, 128, size=(1, 3, 9, 11))
    img = t.quantize((q + 5).astype(np.float32))
    padded = np.pad(q[0].transpose(1, 2, 0), ((3, 2), (3, 2), (0, 0)), constant_values=-5)
    for y in range(4):
        for x in range(5):
            assert img[y, x, :147].tolist() == padded[2 * y:2 * y + 7, 2 * x:2 * x + 7].reshape(-1).tolist()
    assert (img[:, :, 147:] == -5).all()


def test_tensor_info_patch_equal_to_block_is_space_to_depth():
    kw = {"pad": [1, 1, 1, 1], "block": 2}
    a = TensorInfo("x", [1, 3, 6, 6], "NCHW", 0, 6, 6, 3, 16, 1.0, -5, **kw)
    b = TensorInfo("x", [1, 3, 6, 6], "NCHW", 0, 6, 6, 3, 16, 1.0, -5, patch=[2, 2], **kw)
    x = np.random.default_rng(2).integers(-128, 128, size=(1, 3, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(a.quantize(x), b.quantize(x))


def test_tensor_info_rejects_untileable_patches():
    with pytest.raises(ProgramError, match="patches 7x7 every 2 do not tile"):
        TensorInfo("x", [1, 3, 4, 8], "NCHW", 0, 4, 8, 3, 160, 1.0, 0, pad=[1, 3, 1, 3], block=2, patch=[7, 7])
    with pytest.raises(ProgramError, match="cpad 128 < 7×7×3"):
        TensorInfo("x", [1, 3, 9, 9], "NCHW", 0, 9, 9, 3, 128, 1.0, 0, pad=[3, 3, 2, 2], block=2, patch=[7, 7])


def test_program_with_patches_is_format_3_and_round_trips(program):
    plain = program.to_bytes()
    assert struct.unpack_from("<8sII", plain)[1] == FORMAT_VERSION      # old readers keep reading plain files
    assert "patch" not in _split(plain)[0]["inputs"][0]
    x = program.inputs[0]
    program.inputs[0] = TensorInfo(x.name, [1, 1, 9, 9], "NCHW", x.addr, 9, 9, 1, 64, x.scale, x.zero_point,
                                   pad=[3, 3, 2, 2], block=2, patch=[7, 7])
    data = program.to_bytes()
    assert struct.unpack_from("<8sII", data)[1] == FORMAT_VERSION_PATCHES
    assert Program.from_bytes(data).inputs[0] == program.inputs[0]


def test_program_rejects_malformed_patch(program):
    header, payload = _split(program.to_bytes())
    header["inputs"][0]["patch"] = [7]
    with pytest.raises(ProgramError, match=r"patch \[7\] is not \[rows, columns\]"):
        Program.from_bytes(_rebuild(header, payload, version=FORMAT_VERSION_PATCHES))
