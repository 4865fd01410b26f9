"""Decode micro-benchmark: records/s on one core for each payload format, no Flink involved.

Rates are records per CPU-second of this process (one core), best of ``--repeat`` runs.
Two numbers per case:
  decoder   the compiled spec's ``decode(envelope, identity)`` alone (payload -> record);
  pipeline  what the job's decode operator does per Kafka record: parse the raw envelope,
            resolve the device, pick the spec, decode, check the data contract, serialize JSON.

    python bench/decode.py [--records N] [--repeat R]
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from operators.checksums import crc16_modbus  # noqa: E402
from operators.decode import DecoderRegistry, DeviceIdentity, decode_raw_record  # noqa: E402
from operators.envelope import RawEnvelope, build_envelope  # noqa: E402
from operators.spec_loading import build_registry, load_spec_file  # noqa: E402
from operators.telemetry import telemetry_to_json  # noqa: E402

NOW = 1772359200000


def _fire_frame(rng: random.Random, idx: int) -> bytes:
    body = struct.pack(
        ">BHIHHHHHHIhhHHHH", 1, idx & 0xFFFF, 1772359200 + idx, rng.choice((0, 0, 0, 5, 4096)), rng.randint(2100, 2300),
        rng.randint(2000, 2200), rng.randint(0, 20000), rng.randint(0, 100), rng.randint(0, 50), rng.randint(0, 100000),
        rng.randint(100, 700), rng.randint(100, 700), rng.randint(0, 300), rng.randint(0, 800), rng.randint(700, 1000), rng.randint(0, 3),
    )
    return body + crc16_modbus(body).to_bytes(2, "little")


def payloads(case: str, n: int) -> list[bytes]:
    """``n`` distinct, valid payloads for a case."""
    rng = random.Random(7)
    out = []
    for i in range(n):
        t, h = rng.randint(-400, 1200), rng.randint(0, 100)
        if case == "hex length_based (raw bytes)":
            out.append(struct.pack(">hB", t, h))
        elif case == "hex length_based (hex text)":
            out.append(struct.pack(">hB", t, h).hex().upper().encode())
        elif case == "hex key_value":
            parts = [struct.pack(">Hh", 1, t), struct.pack(">HB", 2, h)]
            rng.shuffle(parts)
            out.append(b"".join(parts))
        elif case == "hex hybrid":
            out.append(b"\xaa" + struct.pack(">hB", t, h) + b"\xaa" + struct.pack(">i", rng.randint(90000, 110000)))
        elif case == "hex 37-byte frame + CRC16 + 13 bit flags":
            out.append(_fire_frame(rng, i))
        elif case == "json (fire sensor, 14 mapped paths)":
            out.append(orjson.dumps({
                "deviceId": f"fire-{i % 1000:04d}", "idx": i, "status": rng.choice((0, 5, 4096)), "volt": 220.0 + rng.random(),
                "voltLow": 218.0, "ct": 12.3, "zct": 1.2, "rzct": 0.4, "pwr": 2712.3, "pcbTemp": 35.5, "sensorTemp": 28.1,
                "co": 3.5, "voc": 120, "pFct": 0.95, "aArc": 0, "timestamp": NOW + i,
            }))
        elif case == "csv (1 row)":
            out.append(f"temp,hum\n{t / 10},{h}\n".encode())
        elif case == "json client shape (built-in)":
            out.append(orjson.dumps({"device_timestamp": NOW + i, "data": {"metrics": {"tempC": t / 10, "humidity": h, "rpm": 1200}}}))
    return out


CASES = {
    "hex length_based (raw bytes)": "product_a",
    "hex length_based (hex text)": "product_a",
    "hex key_value": "product_b",
    "hex hybrid": "product_c",
    "hex 37-byte frame + CRC16 + 13 bit flags": "fire_sensor_bin",
    "json (fire sensor, 14 mapped paths)": "fire_sensor_json",
    "csv (1 row)": "product_d",
    "json client shape (built-in)": None,
}


def _best(fn, repeat: int) -> float:
    # CPU time of this process: records per core-second, not disturbed by other load on the host.
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    """Runs every case and prints records/s for the decoder alone and the operator's full path."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000, help="distinct payloads per case (default 100000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the best is reported (default 3)")
    args = parser.parse_args(argv)
    specs = {p.stem: load_spec_file(p) for p in sorted((ROOT / "yaml_specs").glob("*.yaml"))}
    print(f"decode micro-benchmark: {args.records:,} distinct payloads per case, best of {args.repeat}, "
          f"records per CPU-second, Python {sys.version.split()[0]}")
    print(f"{'case':44} {'decoder rec/s':>14} {'µs/rec':>8} {'pipeline rec/s':>15} {'µs/rec':>8}")
    for case, spec_name in CASES.items():
        data = payloads(case, args.records)
        if spec_name is None:
            product, registry = "prod-json", DecoderRegistry()
            decoder = registry.by_format["json"]
        else:
            loaded = specs[spec_name]
            product, registry, decoder = loaded.decoder.product_id, build_registry([loaded]), loaded.decoder
        identity = DeviceIdentity("dev-1", product, None, None, None)
        envelopes = [RawEnvelope(payload=p, source="mqtt", received_at=NOW) for p in data]
        raw_values = [build_envelope(RawEnvelope(payload=p, source="mqtt", received_at=NOW, device_id=f"dev-{i % 1000}", product_id=product))
                      for i, p in enumerate(data)]

        def run_decoder(envelopes=envelopes, decoder=decoder, identity=identity):
            for env in envelopes:
                decoder.decode(env, identity)

        def run_pipeline(raw_values=raw_values, registry=registry):
            for raw in raw_values:
                for record in decode_raw_record(raw, registry, NOW).records:
                    telemetry_to_json(record)

        sample = decode_raw_record(raw_values[0], registry, NOW)
        if sample.dead_letters:
            raise SystemExit(f"{case}: sample payload rejected: {sample.dead_letters[0]['reason']}")
        t_dec, t_pipe = _best(run_decoder, args.repeat), _best(run_pipeline, args.repeat)
        n = len(data)
        print(f"{case:44} {n / t_dec:>14,.0f} {t_dec / n * 1e6:>8.2f} {n / t_pipe:>15,.0f} {t_pipe / n * 1e6:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
