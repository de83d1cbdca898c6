"""bench/bench_agreement.py: the packed student's agreement with its float simulation, and its refusals."""

import numpy as np
import pytest

import cli
from bench.bench_agreement import agreement, trained_pair
from bidm_ref.loading.packed import packed_twin
from bidm_ref.binary.packed_layers import packed_layers
from test_packed import write_student


def test_a_packed_twin_agrees_to_rounding_and_a_flipped_weight_bit_shows(tmp_path):
    write_student(tmp_path / "s.h5", "bidm", 2)
    student, packed, run_config = trained_pair(str(tmp_path / "s.h5"))
    same = agreement(student, packed, run_config, n=3, steps=4)
    assert same["eps_max_diff"] < 1e-5 * same["eps_max_abs"] and same["equal_pixel_share"] > 0.95
    broken = packed_twin(student, "bidm", 1000)
    layer = next(module for _, module in packed_layers(broken))
    words = layer.packed.words.copy()                                             # [O, kh, kw, Wd] | [O, Wd]
    words[0] ^= np.uint64(0xFFFF)                                                 # 16 weights of one filter flip
    layer.set_packed(words, layer.packed.alpha)
    off = agreement(student, broken, run_config, n=3, steps=4)
    assert off["eps_max_diff"] > 1e-3 * off["eps_max_abs"] and off["equal_pixel_share"] < same["equal_pixel_share"]


def test_the_cli_reports_a_student_and_refuses_packed_and_unpackable_ones(tmp_path, capsys):
    write_student(tmp_path / "s.h5", "bidm", 2)
    assert cli.main(["bench", "--what", "agreement", "--student", str(tmp_path / "s.h5")]) == 0
    out = capsys.readouterr().out
    assert "agreement_student_eps_max_diff: " in out and "agreement_student_equal_pixel_share: " in out
    assert cli.main(["export", "--weights", str(tmp_path / "s.h5"), "--out", str(tmp_path / "p.h5")]) == 0
    capsys.readouterr()
    assert cli.main(["bench", "--what", "agreement", "--student", str(tmp_path / "p.h5")]) == 2
    assert "is already packed: pass the float student checkpoint" in capsys.readouterr().err
    write_student(tmp_path / "r.h5", "reste", 0)
    assert cli.main(["bench", "--what", "agreement", "--student", str(tmp_path / "r.h5")]) == 2
    assert "cannot be packed" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["agreement_x_eps_max_diff", "agreement_x_eps_max_abs"])
def test_agreement_numbers_print_as_plain_numbers(key):
    from bench.timing import format_ratio

    assert format_ratio(key, 1.7e-6) == "1.7e-06"
