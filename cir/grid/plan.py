"""A grid's cells: the product of its axes, each a list of stages whose calls are built when needed.

Calls are built late on purpose: an evaluation reads the export name the
training stage wrote into its run.json, which exists only once it ran. So the
one way back from the runner (stages.run_stages, local.py, slurm.py) into the
plan is GridStage.call, each time a stage is decided or run; plan imports the
runner's types, never the other way.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cir.config import ConfigError, check_override_form, load_config, parse_overrides, require
from cir.data.synth import settings as synth_settings
from cir.grid.spec import MANDATORY, GridConfig
from cir.grid.stages import CLIS, SCHEMAS, CliCall, InProcessCall, Stage

GRID_FIELDS = {"task", "name", "output_dir", "inputs", "stages", "axes", "labels", "slurm", "fresh", "rerun",
               "in_process", "report", "overrides"}
# Reports written across the cells once all are done (`report:` in the grid): module -> grid_report(grid, ...)
REPORTS = {"demo": "cir.demo.results"}
STAGE_FIELDS = ("enabled", "config")  # what an axis variant may set on a stage besides its config keys
CELL_FILE = "cell.json"
FREE_FORM = ("inputs", "axes", "labels", "stages", "overrides")


def load_grid(path: str | Path, overrides: list[str]) -> tuple[DictConfig, list[str]]:
    """The grid config with grid-level overrides merged (interpolations left for the cells), and the stage overrides."""
    check_override_form(overrides)
    grid_level = [o for o in overrides if o.split("=", 1)[0].split(".")[0] in GRID_FIELDS]
    axes = [o for o in grid_level if o.startswith("axes.")]
    # FREE_FORM: dotted keys (`model.anchor`) in struct mode fail; stage specs stay typed
    cfg = load_config(GridConfig, path, [o for o in grid_level if o not in axes], free_form=FREE_FORM, resolve=False)
    for override in axes:
        set_axis(cfg, *override.split("=", 1))
    require(cfg.task == "grid", "task", "grid", cfg.task)
    require(len(cfg.stages) > 0, "stages", "at least one stage", {})
    require(cfg.report is None or cfg.report in REPORTS, "report", f"null or one of {list(REPORTS)}", cfg.report)
    sections = {f.name for schema in SCHEMAS.values() for f in fields(schema)}
    for name, spec in cfg.stages.items():
        require(name not in sections, f"stages.{name}", f"a stage name that is no config section ({sorted(sections)}: "
                "`KEY=value` on the command line would reach the stage instead of the section)", name)
        require(spec.cli in CLIS, f"stages.{name}.cli", f"one of {list(CLIS)}", spec.cli)
        if OmegaConf.is_missing(spec, "config"):
            raise ConfigError(f"config key `stages.{name}.config`: missing (the stage's YAML, relative to {path})")
        unknown = sorted(set(spec.needs) - set(cfg.stages))
        require(not unknown, f"stages.{name}.needs", f"stage names from {list(cfg.stages)}", list(spec.needs))
        per_cell = [n for n in spec.needs if not cfg.stages[n].shared]
        require(not (spec.shared and per_cell), f"stages.{name}.needs", "shared stages only (a shared stage runs "
                "before the cells)", list(spec.needs))
    return cfg, [o for o in overrides if o not in grid_level]


def set_axis(cfg: DictConfig, key: str, value: str) -> None:
    """`axes.KEY=[a, b]` from the command line: KEY is an axis name as in the YAML, dots and all (`axes.model.anchor`
    names the axis `model.anchor`; a dotlist would nest it), and replaces that axis."""
    name = key.removeprefix("axes.")
    values = parse_overrides([f"axis={value}"]).axis
    require(isinstance(values, ListConfig) and len(values) > 0, key, "a non-empty list of the axis's values "
            f"(`{key}=[a, b]`)", value)
    cfg.axes[name] = values


def override_text(value: Any) -> str:
    """An override's value as text the override parser reads back as `value` (plain where that is safe)."""
    if isinstance(value, str) and value and not set(value) & set("[]{},:'\"#&*!|>%@`= "):
        try:
            if OmegaConf.from_dotlist([f"x={value}"]).x == value:
                return value
        except OmegaConfBaseException:
            pass
    return json.dumps(value)


class Override(NamedTuple):
    """One `key=value` of a stage, in a cell: a YAML value (interpolated, then written as text the parser reads
    back) or, `as_typed`, command-line text passed on as typed."""

    key: str
    value: Any
    as_typed: bool = False


@dataclass
class Cell:
    """One combination of axis values: its name, labels and per-stage overrides (unresolved, in precedence order)."""

    name: str
    axes: dict[str, str]
    labels: dict[str, str]
    enabled: dict[str, bool]
    configs: dict[str, Path]
    overrides: dict[str, list[Override]] = field(default_factory=dict)  # per stage


class Grid:
    """A loaded grid: its cells and, per cell, the stages' calls (built on demand)."""

    def __init__(self, path: str | Path, overrides: list[str]) -> None:
        self.path = Path(path).resolve()
        self.argv_overrides = list(overrides)
        self.cfg, stage_overrides = load_grid(path, overrides)
        self.root = Path(self.cfg.output_dir).resolve()
        self.inputs = OmegaConf.to_container(self.cfg.inputs, resolve=False)
        self.stage_names = list(self.cfg.stages)
        self.shared = [name for name in self.stage_names if self.cfg.stages[name].shared]
        self.bases = {name: self._base(name) for name in self.stage_names}
        common = OmegaConf.to_container(self.cfg.overrides, resolve=False)
        self.common = [self._route(str(k), v, "config key `overrides`") for k, v in common.items()]
        self.cli = [self._route(*o.split("=", 1), "the command line") for o in stage_overrides]
        self.cells = self._cells()
        self._checked: tuple[list[str], list[str]] | None = None
        self.check_mandatory()
        self.check_rerun()

    def _base(self, name: str, config: str | None = None) -> DictConfig:
        spec = self.cfg.stages[name]
        return load_config(SCHEMAS[spec.cli], self.path.parent / (config or spec.config))

    def check_rerun(self) -> None:
        """`rerun` entries name a stage (every cell) or CELL/STAGE; a typo is an error, not a silent no-op."""
        cells = {c.name for c in self.cells}
        for entry in self.cfg.rerun:
            cell, _, stage = entry.rpartition("/")
            require(stage in self.stage_names and (not cell or (cell in cells and stage not in self.shared)), "rerun",
                    f"STAGE or CELL/STAGE with a stage from {self.stage_names} and a cell from {sorted(cells)}", entry)

    def rerun(self, cell: Cell | None) -> set[str]:
        """The stages `rerun` names for one cell (None: the shared stages)."""
        entries = [e.rpartition("/") for e in self.cfg.rerun]
        return {stage for at, _, stage in entries if not at or (cell is not None and at == cell.name)}

    def _route(self, key: str, value: str, origin: str) -> list[tuple[str, str, str]]:
        """(stage, key, value) for every stage a `key=value` reaches: `STAGE.key` one stage, `key` all that have it."""
        head, _, rest = key.partition(".")
        if head in self.cfg.stages and rest:
            return [(head, rest, value)]
        found = [(name, key, value) for name, base in self.bases.items()
                 if OmegaConf.select(base, key, default=MANDATORY + "absent") != MANDATORY + "absent"]
        if not found:
            raise ConfigError(f"{origin}: config key `{key}`: no stage of the grid has it "
                              f"(stages: {', '.join(self.stage_names)}; STAGE.{key}=... for one stage)")
        return found

    def _axis(self, name: str, values: Any) -> list[tuple[str, list[tuple[str, Any]]]]:
        """(label, [(key, value), ...]) per value of an axis."""
        if isinstance(values, DictConfig):
            return [(str(label), list(OmegaConf.to_container(setting, resolve=False).items()))
                    for label, setting in values.items()]
        short = name.rsplit(".", 1)[-1]
        return [(f"{short}-{value}", [(name, value)]) for value in OmegaConf.to_container(values, resolve=False)]

    def _cells(self) -> list[Cell]:
        axes = {name: self._axis(name, values) for name, values in self.cfg.axes.items()}
        cells = []
        for combo in itertools.product(*axes.values()) if axes else [()]:
            name = "_".join(re.sub(r"[^\w.=+-]", "-", label) for label, _ in combo) or "run"
            cell = Cell(name, {axis: label for axis, (label, _) in zip(axes, combo)}, dict(self.cfg.labels),
                        {s: bool(self.cfg.stages[s].enabled) for s in self.stage_names},
                        {s: (self.path.parent / self.cfg.stages[s].config).resolve() for s in self.stage_names},
                        {s: [] for s in self.stage_names})
            for stage in self.stage_names:
                own = OmegaConf.to_container(self.cfg.stages[stage].overrides, resolve=False)
                cell.overrides[stage] += [Override(k, v) for k, v in own.items()]
            for _, setting in combo:
                for key, value in setting:
                    self._apply(cell, str(key), value)
            for layer, as_typed in ((self.common, False), (self.cli, True)):
                for routed in layer:
                    for stage, key, value in routed:
                        cell.overrides[stage].append(Override(key, value, as_typed))
            cells.append(cell)
        names = [c.name for c in cells]
        require(len(set(names)) == len(names), "axes", "values that give every cell its own name", names)
        return cells

    def _apply(self, cell: Cell, key: str, value: Any) -> None:
        head, _, rest = key.partition(".")
        if head == "labels":
            cell.labels[rest] = str(value)
        elif head in self.cfg.stages and rest in STAGE_FIELDS:
            self._not_shared(cell, head, key)
            if rest == "enabled":
                cell.enabled[head] = bool(value)
            else:
                cell.configs[head] = (self.path.parent / str(value)).resolve()
        else:
            routed = self._route(key, value, f"axis value of cell {cell.name}")
            per_cell = [(stage, k, v) for stage, k, v in routed if stage not in self.shared]
            if not per_cell:
                self._not_shared(cell, routed[0][0], key)
            for stage, k, v in per_cell:  # a shared stage that has the key keeps one value for every cell
                cell.overrides[stage].append(Override(k, v))

    def _not_shared(self, cell: Cell, stage: str, key: str) -> None:
        if stage in self.shared:
            raise ConfigError(f"axis value of cell {cell.name}: config key `{key}` reaches shared stage {stage}, "
                              "which runs once for all cells (STAGE.key for the stages it should vary)")

    def folder(self, cell: Cell, stage: str) -> Path:
        return self.root / stage if stage in self.shared else self.root / cell.name / stage

    def call(self, cell: Cell, stage: str) -> CliCall:
        """The stage's call in this cell, with earlier stages' outputs as they are now."""
        text = str(cell.overrides[stage])
        needs = list(self.cfg.stages[stage].needs) if "${needs." in text else []
        referenced = set(re.findall(r"\$\{stage\.(\w+)\.", text))
        unknown = sorted((referenced | set(needs)) - set(self._before(stage)))
        if unknown:
            raise ConfigError(f"stage {stage} reads stage {unknown[0]}: only earlier stages can be read "
                              f"({', '.join(self._before(stage)) or 'none'})")
        outputs = {s: self._outputs(cell, s) for s in sorted(referenced | set(needs))}
        context = {"cell": cell.name, "root": str(self.root), "stage": outputs, "needs": [outputs[n] for n in needs],
                   "inputs": {k: v for k, v in self.inputs.items() if v != MANDATORY}}
        effective = self._effective_overrides(cell, stage)
        try:
            values = OmegaConf.to_container(OmegaConf.create({**context, "_values": [o.value for o in effective]}),
                                            resolve=True)["_values"]
        except OmegaConfBaseException as err:
            raise ConfigError(f"stage {stage} of cell {cell.name}: {str(err).splitlines()[0]}") from None
        texts = [f"{o.key}={v if o.as_typed else override_text(v)}" for o, v in zip(effective, values)]
        out = self.folder(cell, stage)
        kind = InProcessCall if self.cfg.in_process else CliCall
        return kind(self.cfg.stages[stage].cli, cell.configs[stage], (*texts, f"output_dir={out}"), out)

    def _effective_overrides(self, cell: Cell, stage: str) -> list[Override]:
        """The stage's overrides after every layer, the last one of a key winning (in the order of the keys' last
        setting); `???` left over is an error naming the key."""
        final: dict[str, Override] = {}
        for override in cell.overrides[stage]:
            final.pop(override.key, None)
            final[override.key] = override
        missing = [k for k, o in final.items() if o.value == MANDATORY]
        if missing and cell.enabled[stage]:
            raise ConfigError(f"config key `{stage}.{missing[0]}`: mandatory, give it on the command line "
                              f"({stage}.{missing[0]}=... or {missing[0]}=...)")
        inputs = set(re.findall(r"\$\{inputs\.(\w+)\}", str([o.value for o in final.values()])))
        unset = sorted(name for name in inputs if self.inputs.get(name, MANDATORY) == MANDATORY)
        if unset and cell.enabled[stage]:
            raise ConfigError(f"config key `inputs.{unset[0]}`: mandatory, give it on the command line "
                              f"(inputs.{unset[0]}=...; stage {stage} reads it)")
        return [o for o in final.values() if o.value != MANDATORY]

    def check_mandatory(self) -> None:
        for cell in self.cells:
            for stage in self.stage_names:
                self._effective_overrides(cell, stage)

    def _before(self, stage: str) -> list[str]:
        return self.stage_names[: self.stage_names.index(stage)]

    def _outputs(self, cell: Cell, stage: str) -> dict[str, Any]:
        """What a later stage may read from `stage`: its folder, export and the model name to load the export with
        (a synth stage: cir.data.synth.settings.outputs)."""
        call = self.call(cell, stage)
        cfg = call.load()
        if call.cli == "synth":
            return synth_settings.outputs(cfg)
        if call.cli != "fit" or not cell.enabled[stage]:
            pretrained = cfg.model.pretrained if call.cli == "fit" else None
            return {"out": str(call.out), "export": str(pretrained), "export_model": cfg.model.name}
        record = call.out / "run.json"
        if record.is_file():
            run = json.loads(record.read_text(encoding="utf-8"))
            return {"out": str(call.out), "export": run["export"], "export_model": run["export_model_name"]}
        # not trained yet: where cir.fit will write it (BLIP: a save_pretrained folder); the name as configured
        folder = "/" in cfg.model.name and not cfg.model.name.endswith(".json") and ":" not in cfg.model.name
        return {"out": str(call.out), "export": str(call.out / ("export" if folder else "export.pt")),
                "export_model": cfg.model.name}

    def stages(self, cell: Cell) -> list[Stage]:
        """The enabled stages of a cell, each with its one call built when the runner asks for it."""
        return [GridStage(self, cell, name) for name in self.stage_names
                if cell.enabled[name] and name not in self.shared]

    def check(self) -> tuple[list[str], list[str]]:
        """Every call checked as its CLI checks it, before any runs or is submitted: the one-line failures
        (`shared stages: FAILED: ...`, `cell C: FAILED: ...`) and the cells they fail (a shared stage's: every cell).
        Checked once per Grid: cir.grid asks before it locks the folder, the runner or submitter again."""
        if self._checked is None:
            self._checked = self._check()
        return self._checked

    def _check(self) -> tuple[list[str], list[str]]:
        try:
            for stage in self.shared_stages():
                stage.validate()
        except (ConfigError, FileNotFoundError) as err:
            return [f"shared stages: FAILED: {err}"], [c.name for c in self.cells]
        lines, failed = [], []
        for cell in self.cells:
            try:
                for stage in self.stages(cell):
                    stage.validate()
                    self.check_data_root(stage)
            except (ConfigError, FileNotFoundError) as err:
                lines.append(f"cell {cell.name}: FAILED: {err}")
                failed.append(cell.name)
        return lines, failed

    def check_data_root(self, stage: Stage) -> None:
        """An evaluation's benchmark root must exist before any stage runs, unless it lies in the grid's folder,
        where an earlier stage (a synth) writes it."""
        call = stage.call
        if call.cli in ("evaluate", "submit"):
            root = Path(call.load().data.root).expanduser().resolve()
            if not root.exists() and self.root not in root.parents:
                raise ConfigError(f"grid stage {stage.name}: config key `data.root`: {root} does not exist")

    def shared_stages(self) -> list[Stage]:
        """The enabled shared stages (their config is the same in every cell: no axis reaches them)."""
        return [GridStage(self, self.cells[0], name) for name in self.shared if self.cfg.stages[name].enabled]

    def record(self, cell: Cell) -> dict[str, Any]:
        """cell.json: what cir.report needs to label this cell's results."""
        return {"grid": self.cfg.name, "cell": cell.name, "axes": cell.axes, "labels": cell.labels,
                "stages": {s: {"cli": self.cfg.stages[s].cli, "enabled": cell.enabled[s]} for s in self.stage_names}}


class GridStage(Stage):
    """One stage of one cell; its call is rebuilt on every access, so it sees what earlier stages wrote."""

    def __init__(self, grid: Grid, cell: Cell, name: str) -> None:
        spec = grid.cfg.stages[name]
        needs = [n for n in spec.needs if cell.enabled[n]]
        super().__init__(name, spec.title or f"{spec.cli} {Path(cell.configs[name]).name}", needs=needs)
        self.grid, self.cell = grid, cell

    @property
    def call(self) -> CliCall:
        return self.grid.call(self.cell, self.name)
