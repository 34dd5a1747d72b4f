"""Part 2 of bench_federation.py: bytes a site sends and receives per round, FedAvg vs SecAgg+, three model sizes.

Measured in the simulation engine (3 sites x 10 patients) by the byte-counting
ClientApp mod of federation_sim.py: what Flower 1.41 ships per message (the
deflated unique inflatable objects) and the message as one protobuf.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from federation_runs import BENCH_DIR, DEFAULT, GESTURES, SECAGG_STAGES, SMALL, make_sites, run_child, sim_config, with_load

from semiofed.common.federation.run_config import FederationConfig


def model_size(config: dict[str, Any]) -> dict[str, int]:
    """The model of a run config: arrays, values and float32 bytes of its state_dict."""
    from semiofed.common.learning.classifier import build_classifier, classifier_config
    from semiofed.common.learning.weights import get_weights

    weights = get_weights(build_classifier(classifier_config(FederationConfig(**config))))
    return {"arrays": len(weights), "values": int(sum(w.size for w in weights)), "bytes": int(sum(w.nbytes for w in weights))}


def summarise_bytes(bytes_dir: Path, rounds: set[str] | None = None) -> dict[str, Any]:
    """Mean bytes per site per round, by message kind (SecAgg+ stages apart), sent and received; only `rounds` if given."""
    rows = [json.loads(line) for f in sorted(bytes_dir.glob("*.jsonl")) for line in f.read_text().splitlines()]
    rows = [r for r in rows if rounds is None or r["round"] in rounds]
    sites = {r["partition"] for r in rows}
    rounds = {r["round"] for r in rows}
    keys = ("messages", "sent_objects", "sent_proto", "received_objects", "received_proto", "seconds")
    kinds: dict[str, dict[str, float]] = {}
    for r in rows:
        k = kinds.setdefault(r["stage"] or r["type"], dict.fromkeys(keys, 0.0))
        k["messages"] += 1
        for key in keys[1:]:
            k[key] += r.get(key, 0.0)  # seconds: the ClientApp's time on the message, inside the byte counter
    per = len(sites) * len(rounds)
    for k in kinds.values():
        for key in keys:
            k[key] /= per
    return {"sites": len(sites), "rounds": len(rounds), "per_site_round": kinds}


SHAPES = (("small", SMALL, 16, 2), ("default", DEFAULT, 1024, 1), ("GESTURES-sized", GESTURES, 1024, 1))


def bytes_part(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Small (2 rounds), default and GESTURES-sized (1 round) model, FedAvg and SecAgg+, 3 sites x 10 patients."""
    part: dict[str, Any] = {}
    for shape, extra, dim, rounds in SHAPES:
        sites_dir = make_sites(BENCH_DIR / f"sites-bytes-{shape}", 3, n_patients=10, dim=dim)
        for secure in (False, True):
            make_sites(sites_dir, 3, n_patients=10, dim=dim)
            tag = f"{shape}_{'secagg' if secure else 'plain'}"
            bytes_dir = BENCH_DIR / "bytes" / tag
            shutil.rmtree(bytes_dir, ignore_errors=True)
            bytes_dir.mkdir(parents=True)
            config = {**sim_config(f"bytes-{tag}", rounds, secure), **extra}
            if shape != "small":
                for key in ("temporal", "hidden", "embed_dim", "n_segments", "stcnn_dim", "descriptors", "streams"):
                    if key not in extra:
                        config.pop(key, None)  # FederationConfig's defaults
            sim = with_load(lambda: run_child("sim", {"sites_dir": str(sites_dir), "config": config, "bytes_dir": str(bytes_dir)},
                                              timeout=900))
            if sim["status"] != "finished":
                raise RuntimeError(f"bytes run {tag} did not finish: {sim.get('error')}")
            part[tag] = {"model": model_size(config), "load_1min": sim["load_1min"], **summarise_bytes(bytes_dir)}
            print(tag, json.dumps(part[tag]), flush=True)
    results["bytes"] = part


# --- report ----------------------------------------------------------------------------
def render_bytes(b: dict[str, Any]) -> list[str]:
    """The markdown of part 2."""
    out = ["### 2. Bytes per site per round", "",
           "Measured in the simulation engine (3 sites x 10 patients) by a ClientApp mod outside secaggplus_mod: each "
           "message's unique inflatable objects, deflated, i.e. what a SuperNode pulls from and pushes to the SuperLink "
           "in Flower 1.41, before HTTP/2, TLS and TCP framing. Mean per site per round. Model bytes: the float32 "
           "state_dict. Small: the model of part 1 (2 rounds); default: FederationConfig's defaults, the DP-sized model "
           "the sites train (1 round); GESTURES-sized: BLSTM hidden 64, embed 64, 16 segments over the 1024-d I3D "
           "features and the keypoint stream (1 round).", "",
           "| model | model B | mode | budget query B | train B | evaluate B | **sent B** | sent / model | received B |",
           "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    expansion = []
    for shape, *_ in SHAPES:
        train_sent = {}
        for mode in ("plain", "secagg"):
            e = b.get(f"{shape}_{mode}")
            if not e:
                continue
            k, model = e["per_site_round"], e["model"]["bytes"]
            if mode == "secagg":
                train_sent[mode] = sum(k[x]["sent_objects"] for x in SECAGG_STAGES if x in k)
                label = "SecAgg+: " + ", ".join(f"{x} {k[x]['sent_objects']:,.0f}" for x in SECAGG_STAGES if x in k)
            else:
                train_sent[mode] = k.get("train", {}).get("sent_objects", 0.0)
                label = "FedAvg"
            total = sum(v["sent_objects"] for v in k.values())
            received = sum(v["received_objects"] for v in k.values())
            out.append(f"| {shape} ({e['model']['values']:,} values) | {model:,} | {label} | "
                       f"{k.get('get_properties', {}).get('sent_objects', 0):,.0f} | {train_sent[mode]:,.0f} | "
                       f"{k.get('evaluate', {}).get('sent_objects', 0):,.0f} | **{total:,.0f}** | {total / model:.2f} | {received:,.0f} |")
        if len(train_sent) == 2:
            plain_total = sum(v["sent_objects"] for v in b[f"{shape}_plain"]["per_site_round"].values())
            secagg_total = sum(v["sent_objects"] for v in b[f"{shape}_secagg"]["per_site_round"].values())
            expansion.append(f"{shape} model: **{train_sent['secagg'] / train_sent['plain']:.2f}x** for the update "
                             f"({train_sent['secagg']:,.0f} B over 4 stages vs {train_sent['plain']:,.0f} B), "
                             f"{secagg_total / plain_total:.2f}x for all a site sends in a round")
    out += ["", "SecAgg+ expansion with 3 sites: " + "; ".join(expansion) + ". The masked update is the model quantised "
            "to integers below the 2^32 modulus and sent as 4-byte integers (client_app.narrow_masked_vector), as many "
            "bytes a value as FedAvg's float32, so the ratio tends to 1x for a large model; the key stages (public keys, "
            "one encrypted share per neighbour) and each message's headers add a fixed amount that dominates for a "
            "model of a few hundred values and grows with the number of neighbours (bench_federation_scale.py)."]
    timing = []
    for tag in ("small_plain", "small_secagg"):
        k = b.get(tag, {}).get("per_site_round", {})
        if any("seconds" in v for v in k.values()):
            timing.append(f"{'SecAgg+' if 'secagg' in tag else 'FedAvg'}: " + ", ".join(
                f"{kind} {v['seconds']:.2f}" for kind, v in k.items()))
    if timing:
        out += ["", "The ClientApp's own time per message (small model, simulation, mean s per site per round, "
                "measured around the rest of the app by the same mod): " + "; ".join(timing) + "."]
    received = []
    for shape, *_ in SHAPES:
        p, q = b.get(f"{shape}_plain"), b.get(f"{shape}_secagg")
        if p and q:
            ep = p["per_site_round"].get("evaluate", {}).get("received_objects", 0)
            eq = q["per_site_round"].get("evaluate", {}).get("received_objects", 0)
            received.append(f"{shape} {ep:,.0f} B with FedAvg, {eq:,.0f} B with SecAgg+ ({eq / max(ep, 1):.2f}x)")
    if received:
        out += ["", "Global model the server sends for evaluation (received per site per round): " + "; ".join(received) +
                ". After SecAgg+ the unmasked aggregate comes out of Flower's dequantisation as float64; the "
                "coordinator casts it back to float32 before sending it on (evaluate, and the next round's fit)."]
    return out
