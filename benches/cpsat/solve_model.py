#!/usr/bin/env python3
"""Solves a cloud-placement model (JSON, as written by
`cargo run --release -p cloud-placement --features bench-support --example family-report -- --export DIR`)
with OR-Tools CP-SAT, for comparison with the Rust solver.

    python solve_model.py MODEL.json [MODEL.json ...] --time-limits 1,10 --workers 2 --out DIR
    python solve_model.py DIR/NAME.json --time-limits 30 --hint-suffix solver-10s --out DIR2

For every model and time limit it prints `name limit status objective bound seconds` and writes
`DIR/<name>.cpsat-<limit>s.json` with the plan (`{"placements": {unit: [region, ...]}}`), the
objective, the bound and the status; `family-report --import DIR` prices that plan with the
crate's checker (the cross-check of this model) and adds it to the table.

The objective is the one `cloud_placement::checker` prices:
  compute   sum over replicas of demand x price (or the (unit, region) override's cost), weighted;
  latency   weight x the worst latency to the unit's user regions, per replica;
  egress    per traffic edge: gb x sum over replica pairs of price(from region, to region)
            / (replicas(from) x replicas(to)); price from the `egress` overrides, else the
            source provider's inter-region rate (same provider) or internet rate;
  migration per unit with a current placement: migration_cost x (min(replicas, |current|)
            - sum over regions of min(current there, placed there)).
Hard constraints: filters (down, allowed / forbidden regions, labels, certifications, latency),
replica counts, capacity per region and dimension, spread (providers, regions), co-location
(all replicas of a group in one region), anti-affinity (no shared region). Not modelled:
survivability and migration budgets (the family uses neither).

Integers: demands and capacities are scaled by 100 (the family's grids make that exact; a
model off that grid is refused). Cost coefficients are scaled by 1e6 and rounded DOWN; every
term is a non-negative coefficient times a non-negative quantity, so the scaled objective never
exceeds the true one and CP-SAT's bound / 1e6 is a valid lower bound of the true optimum. The
plan's true cost is the checker's (the objective printed here may be lower by the rounding,
at most 1e-6 per term).
"""

import argparse
import json
import math
import os
import sys
import time

from ortools.sat.python import cp_model

CAP_SCALE = 100
COST_SCALE = 1_000_000


def on_grid(x, what):
    v = x * CAP_SCALE
    r = round(v)
    if abs(v - r) > 1e-6:
        sys.exit(f"{what} = {x} is not on the 1/{CAP_SCALE} grid")
    return int(r)


def allowed(u, p, r):
    """The checker's filter: may unit u run in region r of provider p?"""
    if p.get("down") or r.get("down"):
        return False
    if u.get("allowed_regions") and r["id"] not in u["allowed_regions"]:
        return False
    if r["id"] in u.get("forbidden_regions", []):
        return False
    labels = r.get("labels", {})
    for k, vals in u.get("require_labels", {}).items():
        if labels.get(k) not in vals:
            return False
    for k, vals in u.get("forbid_labels", {}).items():
        if k in labels and labels[k] in vals:
            return False
    for c in u.get("require_certifications", []):
        if c not in r.get("certifications", []):
            return False
    mx = u.get("max_latency_ms")
    if mx is not None:
        for ur in u.get("user_regions", []):
            lat = r.get("latency_ms", {}).get(ur)
            if lat is None or lat > mx:
                return False
    return True


def solve(model, limit, workers, hint=None):
    weights = {"compute": 1.0, "egress": 1.0, "migration": 1.0, "latency": 0.0}
    weights.update(model.get("weights", {}))
    regions = []  # (provider, region)
    for p in model["providers"]:
        for r in p["regions"]:
            regions.append((p, r))
    rid = {r["id"]: i for i, (_, r) in enumerate(regions)}
    prov_of = [p["id"] for p, _ in regions]
    providers = sorted(set(prov_of))
    overrides = {(o["unit"], o["region"]): o for o in model.get("overrides", [])}
    egress_over = {}
    for e in model.get("egress", []):
        egress_over.setdefault((e["from_region"], e["to_region"]), e["price_per_gb"])

    def price(a, b):
        if a == b:
            return 0.0
        ra, rb = regions[a][1]["id"], regions[b][1]["id"]
        if (ra, rb) in egress_over:
            return egress_over[(ra, rb)]
        pa, pb = regions[a][0], regions[b][0]
        return pa.get("egress_inter_region", 0.0) if pa["id"] == pb["id"] else pa.get("egress_internet", 0.0)

    def floor_cost(c):
        return int(math.floor(c * COST_SCALE + 1e-9))

    m = cp_model.CpModel()
    units = model["units"]
    x = {}  # (unit index, region index) -> count
    allow = []
    obj = []
    for ui, u in enumerate(units):
        n = u["replicas"]
        al = [i for i, (p, r) in enumerate(regions) if allowed(u, p, r)]
        if not al:
            return None, "INFEASIBLE (a unit has no allowed region)", None, None, 0.0
        allow.append(al)
        for i in al:
            x[ui, i] = m.NewIntVar(0, n, f"x_{ui}_{i}")
            r = regions[i][1]
            o = overrides.get((u["id"], r["id"]))
            if o is not None and o.get("cost") is not None:
                c = o["cost"]
            else:
                d = o["demand"] if o is not None and o.get("demand") is not None else u.get("demand", {})
                c = sum(v * r.get("price", {}).get(k, 0.0) for k, v in d.items())
            lat = max([r.get("latency_ms", {}).get(ur, 0.0) for ur in u.get("user_regions", [])
                       if ur in r.get("latency_ms", {})] or [0.0])
            coef = floor_cost(weights["compute"] * c + weights["latency"] * lat)
            if coef:
                obj.append(coef * x[ui, i])
        m.Add(sum(x[ui, i] for i in al) == n)
    # Capacity.
    for i, (_, r) in enumerate(regions):
        for k in model["dimensions"]:
            cap = on_grid(r.get("capacity", {}).get(k, 0.0), f"capacity {r['id']}.{k}")
            terms = []
            for ui, u in enumerate(units):
                if (ui, i) not in x:
                    continue
                o = overrides.get((u["id"], r["id"]))
                d = o["demand"] if o is not None and o.get("demand") is not None else u.get("demand", {})
                dv = on_grid(d.get(k, 0.0), f"demand {u['id']}.{k}")
                if dv:
                    terms.append(dv * x[ui, i])
            if terms:
                m.Add(sum(terms) <= cap)
    # Presence booleans where needed.
    present = {}

    def pres(ui, i):
        if (ui, i) not in present:
            b = m.NewBoolVar(f"b_{ui}_{i}")
            m.Add(x[ui, i] >= 1).OnlyEnforceIf(b)
            m.Add(x[ui, i] == 0).OnlyEnforceIf(b.Not())
            present[ui, i] = b
        return present[ui, i]

    uidx = {u["id"]: ui for ui, u in enumerate(units)}
    for ui, u in enumerate(units):
        s = u.get("spread")
        if not s:
            continue
        if s.get("min_providers", 0) > 1:
            zs = []
            for p in providers:
                rs = [i for i in allow[ui] if prov_of[i] == p]
                if rs:
                    z = m.NewBoolVar(f"z_{ui}_{p}")
                    m.Add(sum(x[ui, i] for i in rs) >= 1).OnlyEnforceIf(z)
                    zs.append(z)
            m.Add(sum(zs) >= s["min_providers"])
        if s.get("min_regions", 0) > 1:
            m.Add(sum(pres(ui, i) for i in allow[ui]) >= s["min_regions"])
    # Co-location.
    groups = {}
    for ui, u in enumerate(units):
        if u.get("colocate"):
            groups.setdefault(u["colocate"], []).append(ui)
    for g, members in groups.items():
        common = set(allow[members[0]])
        for ui in members[1:]:
            common &= set(allow[ui])
        if not common:
            return None, f"INFEASIBLE (co-location group {g} has no common region)", None, None, 0.0
        sel = {i: m.NewBoolVar(f"g_{g}_{i}") for i in sorted(common)}
        m.AddExactlyOne(sel.values())
        for ui in members:
            n = units[ui]["replicas"]
            for i in allow[ui]:
                m.Add(x[ui, i] == n * sel[i] if i in sel else x[ui, i] == 0)
    # Anti-affinity.
    for ui, u in enumerate(units):
        for other in u.get("anti_affinity", []):
            vi = uidx[other]
            for i in set(allow[ui]) & set(allow[vi]):
                m.AddBoolOr([pres(ui, i).Not(), pres(vi, i).Not()])
    # Egress: for edge (a, b) and each region i of a, x[a,i] times the count of b's replicas
    # in each price class as seen from i (same provider other region / other provider), plus
    # region-pair overrides; all non-negative.
    for t in model.get("traffic", []):
        a, b = uidx[t["from"]], uidx[t["to"]]
        if a == b:
            continue
        na, nb = units[a]["replicas"], units[b]["replicas"]
        f = weights["egress"] * t["gb"] / (na * nb)
        for i in allow[a]:
            classes = {}  # price -> list of regions j of b
            for j in allow[b]:
                pr = price(i, j)
                if pr > 0:
                    classes.setdefault(pr, []).append(j)
            for pr, js in classes.items():
                coef = floor_cost(f * pr)
                if coef == 0:
                    continue
                cnt = m.NewIntVar(0, nb, f"c_{a}_{b}_{i}_{len(obj)}")
                m.Add(cnt == sum(x[b, j] for j in js))
                prod = m.NewIntVar(0, na * nb, f"p_{a}_{b}_{i}_{len(obj)}")
                m.AddMultiplicationEquality(prod, [x[a, i], cnt])
                obj.append(coef * prod)
    # Migration.
    for ui, u in enumerate(units):
        cur = u.get("current", [])
        if not cur or u.get("migration_cost", 0.0) <= 0:
            continue
        n = u["replicas"]
        counts = {}
        for r in cur:
            counts[r] = counts.get(r, 0) + 1
        kept = []
        for r, c in counts.items():
            i = rid.get(r)
            if i is None or (ui, i) not in x:
                continue
            # Exactly min(current there, placed there): the objective of any solution (not
            # only an optimal one) is then its true migration cost.
            k = m.NewIntVar(0, min(c, n), f"k_{ui}_{i}")
            m.AddMinEquality(k, [x[ui, i], c])
            kept.append(k)
        moved = m.NewIntVar(0, n, f"mv_{ui}")
        m.Add(moved == min(n, len(cur)) - sum(kept))
        coef = floor_cost(weights["migration"] * u["migration_cost"])
        if coef:
            obj.append(coef * moved)
    objective = sum(obj)
    m.Minimize(objective)
    if hint is not None:
        for ui, u in enumerate(units):
            regs = hint.get("placements", {}).get(u["id"], [])
            for i in allow[ui]:
                m.AddHint(x[ui, i], regs.count(regions[i][1]["id"]))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = limit
    solver.parameters.num_workers = workers
    t0 = time.time()
    status = solver.Solve(m)
    secs = time.time() - t0
    name = solver.StatusName(status)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None, name, None, solver.BestObjectiveBound() / COST_SCALE, secs
    plan = {}
    for ui, u in enumerate(units):
        regs = []
        for i in allow[ui]:
            regs += [regions[i][1]["id"]] * solver.Value(x[ui, i])
        plan[u["id"]] = sorted(regs)
    # The objective evaluated on the returned assignment: CP-SAT's own ObjectiveValue() was
    # seen to differ from it (by about 1%) when stopped by the time limit.
    return (
        {"placements": plan},
        name,
        solver.Value(objective) / COST_SCALE,
        solver.BestObjectiveBound() / COST_SCALE,
        secs,
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--time-limits", default="1,10")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=".")
    ap.add_argument("--hint-suffix", default=None,
                    help="start from MODEL_DIR/<stem>.<suffix>.plan.json (e.g. solver-10s, "
                         "written by family-report --export); outputs are named "
                         "<stem>.cpsat-from-<suffix>-<limit>s.json")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    limits = [float(s) for s in args.time_limits.split(",") if s.strip()]
    for path in args.models:
        if path.endswith(".plan.json"):
            continue  # a solver plan written beside the models by --export, not a model
        with open(path) as fh:
            model = json.load(fh)
        stem = os.path.splitext(os.path.basename(path))[0]
        hint = None
        if args.hint_suffix:
            hp = os.path.join(os.path.dirname(path), f"{stem}.{args.hint_suffix}.plan.json")
            with open(hp) as fh:
                hint = json.load(fh)
        for limit in limits:
            plan, status, objective, bound, secs = solve(model, limit, args.workers, hint)
            tag = f"{limit:g}" if hint is None else f"from-{args.hint_suffix}-{limit:g}"
            print(f"{stem} {tag}s {status} objective {objective} bound {bound} seconds {secs:.2f}", flush=True)
            out = {"plan": plan or {"placements": {}}, "objective": objective, "bound": bound,
                   "status": status, "seconds": secs}
            with open(os.path.join(args.out, f"{stem}.cpsat-{tag}s.json"), "w") as fh:
                json.dump(out, fh)


if __name__ == "__main__":
    main()
