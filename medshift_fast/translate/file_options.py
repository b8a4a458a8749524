"""``TranslateConfig``: the options of ``medshift translate`` on files and folders (one frozen
dataclass: the CLI is generated from its fields and their docstring) and their checks.
:mod:`.files` runs them."""

from __future__ import annotations

from dataclasses import dataclass

from ..data.geometry import RESIZE_MODES
from ..errors import MedShiftError
from .intensity import DEFAULT_MODE, INTENSITY_MODES
from .settings import ENGINES, MODES, PRECISIONS, TranslateOptions

__all__ = ["DICOM_MODALITIES", "OUT_FORMATS", "TranslateConfig"]

OUT_FORMATS = ("same", "png", "tiff", "dicom")
#: DICOM Modality defined terms (PS3.3 C.7.3.1.1.1, current and retired), for --allow-modality.
DICOM_MODALITIES = frozenset(
    "AR ASMT AU BDUS BI BMD CD CF CP CR CS CT DD DF DG DM DOC DS DX EC ECG EPS ES FA FID FS GM "
    "HC HD IO IOL IVOCT IVUS KER KO LEN LP LS M3D MA MG MR MS NM OAM OCT OP OPM OPR OPT OPTBSV "
    "OPTENF OPV OSS OT PLAN POS PR PT PX REG RESP RF RG RTDOSE RTIMAGE RTPLAN RTRECORD "
    "RTSTRUCT RWV SEG SM SMR SR SRF ST STAIN TEXTUREMAP TG US VA VF XA XC".split())


@dataclass(frozen=True, kw_only=True)
class TranslateConfig(TranslateOptions):
    """``medshift translate``: translate images from one domain to another.

    Attributes:
        checkpoint: run directory written by ``medshift train`` (or ``medshift distill``).
        inputs: image files or folders (searched recursively; files found by extension or by
            content, e.g. extensionless DICOMs).
        out: output folder (relative paths of input folders are kept; not inside an input).
        tau: translation time in [0, 1] (larger keeps more structure).
        out_format: same (the input's own kind) | png | tiff | dicom.
        size: working grid: default the scale the run learned (its native grid or pixel
            spacing; a run trained on resized images resizes the short side to its size; an
            input more than 4x from it is refused until you choose), learned (that scale,
            chosen), native (the input's own grid, in tiles), or N (short side resized to N).
        resize: crop (short side to size; the whole image is translated) | pad (long side to
            size, padded with air); the result is mapped back to the input's geometry.
        tile: tile side in pixels for large images (auto: the tile the run was trained on, or
            for a local network -- a lean student -- the fastest tile, fitted to the image;
            none: the whole image at once, global attention).
        overlap: tile overlap in pixels (default: twice a local network's receptive field,
            exact tiles; a quarter of the tile for any other).
        max_memory: memory budget, e.g. 4G (default: half of the memory available).
        tile_batch: tiles per network forward (default: what the memory plan allows, at most
            4 on a CPU and 64 on a GPU).
        input_bits: treat integer samples as this many significant bits (e.g. 12 for 12-bit
            data in 16-bit PNG / TIFF files that do not declare it).
        seed: seed of the SDE / SDEdit noise (per image: with the input's relative path).
        batch_size: images per network batch (the memory plan may take fewer).
        mode: eager | fused | compiled | cuda_graph (fixed-step solvers for the last three).
        engine: how a one-step student's network runs: auto (the fastest measured) | eager |
            channels_last | compile | cuda_graph | onnx (ONNX Runtime through the exported
            engine, cached and verified; ``translate.engine``).
        precision: auto (bf16 where the CPU or GPU has it natively and the check holds: close
            to fp32 and far below the target's recorded grain; else fp32) | fp32 | bf16 (a
            one-step student's network).
        threads: CPU threads (default: OMP_NUM_THREADS when set, else the CPUs this process may
            run on, os.sched_getaffinity).
        device: auto | cpu | cuda | cuda:N.
        backend: op backend preference for the whole pipeline (auto | reference | cpp |
            triton | cuda).
        allow_modality: also translate these non-radiographic DICOM modalities
            (comma-separated, e.g. CT,MR; all = any).
        frame: frame (0-based) of multi-frame DICOMs and multi-page TIFFs to translate.
        allow_rgb: convert colour inputs to grey (BT.601 luma) instead of refusing them.
        intensity: check (refuse a bit-depth mismatch, warn when outside the training
            intensities) | as-is (translate as read) | match (map the image's percentiles onto
            the training ones and the output back; recorded in the manifest and metadata).
        count_hallucinations: count new compact structures of each output (the manifest's
            hallucination_* columns; about a second per megapixel of working grid).
        skip_bad: report unreadable or refused inputs on stderr (once each) and translate
            the others; the manifest lists them as skipped.
        overwrite: replace existing output files instead of refusing.
        resume: continue an interrupted run into the same --out with the same settings: its
            outputs whose input and output SHA-256 match its manifest are kept, the rest are
            translated, under the same run id, manifest and DICOM series.
        progress: show a progress bar.
    """

    checkpoint: str
    inputs: tuple[str, ...]
    out: str
    tau: float | None = None
    out_format: str = "same"
    size: int | str | None = None
    resize: str = "crop"
    tile: int | str | None = None
    overlap: int | None = None
    max_memory: int | str | None = None
    tile_batch: int | None = None
    input_bits: int | None = None
    seed: int | None = None
    batch_size: int = 16
    mode: str = "eager"
    engine: str = ENGINES[0]
    precision: str = PRECISIONS[0]
    threads: int | None = None
    device: str = "auto"
    backend: str | None = None
    allow_modality: str | None = None
    frame: int | None = None
    allow_rgb: bool = False
    intensity: str = DEFAULT_MODE
    count_hallucinations: bool = True
    skip_bad: bool = False
    overwrite: bool = False
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "inputs", tuple(self.inputs))
        if not self.source or not self.target:
            raise MedShiftError("translate needs --source and --target domain names")
        if isinstance(self.batch_size, bool) or int(self.batch_size) < 1:
            raise MedShiftError(f"--batch-size must be >= 1, got {self.batch_size}")
        for flag, value, choices in (("mode", self.mode, MODES), ("engine", self.engine, ENGINES),
                                     ("precision", self.precision, PRECISIONS)):
            if value not in choices:
                raise MedShiftError(f"unknown --{flag} {value!r}; choose one of "
                                    f"{', '.join(choices)}")
        if self.threads is not None and (isinstance(self.threads, bool) or int(self.threads) < 1):
            raise MedShiftError(f"--threads must be >= 1, got {self.threads}")
        if self.out_format not in OUT_FORMATS:
            raise MedShiftError(f"unknown --out-format {self.out_format!r}; choose one of "
                                f"{', '.join(OUT_FORMATS)}")
        if self.resize not in RESIZE_MODES:
            raise MedShiftError(f"unknown --resize {self.resize!r}; choose crop or pad")
        if self.size is not None and str(self.size).lower() not in ("native", "auto", "learned"):
            try:
                ok = str(int(str(self.size))) == str(self.size).strip() and int(self.size) >= 8
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise MedShiftError(f"--size must be a whole number of pixels >= 8, 'learned', "
                                    f"'native' or 'auto', got {self.size!r}")
        if self.tile is not None and str(self.tile).lower() not in ("auto", "none"):
            try:
                ok = int(str(self.tile)) >= 8
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise MedShiftError(f"--tile must be a number of pixels >= 8, 'auto' or 'none', "
                                    f"got {self.tile!r}")
        if self.overlap is not None and int(self.overlap) < 0:
            raise MedShiftError(f"--overlap must be >= 0, got {self.overlap}")
        if self.tile_batch is not None and int(self.tile_batch) < 1:
            raise MedShiftError(f"--tile-batch must be >= 1, got {self.tile_batch}")
        if self.max_memory is not None:
            from .memory import parse_bytes

            parse_bytes(self.max_memory)
        if self.input_bits is not None and not 1 <= int(self.input_bits) <= 16:
            raise MedShiftError(f"--input-bits must be between 1 and 16, got {self.input_bits}")
        if self.frame is not None and int(self.frame) < 0:
            raise MedShiftError(f"--frame must be >= 0, got {self.frame}")
        if self.intensity not in INTENSITY_MODES:
            raise MedShiftError(f"--intensity must be one of {', '.join(INTENSITY_MODES)}, got "
                                f"{self.intensity!r}")
        if not self.inputs:
            raise MedShiftError("no inputs: pass image files or folders")

        self.modalities()  # unknown modality codes are refused now

    def modalities(self):
        """The ``allow_modality`` argument of ``data.read_image``."""
        if not self.allow_modality:
            return False
        if self.allow_modality.strip().lower() == "all":
            return True
        codes = {m.strip().upper() for m in self.allow_modality.split(",") if m.strip()}
        unknown = sorted(codes - DICOM_MODALITIES)
        if unknown:
            raise MedShiftError(f"--allow-modality: unknown DICOM Modality code(s) "
                                f"{', '.join(unknown)}; use codes of PS3.3 C.7.3.1.1.1 such as "
                                "CT, MR, US, NM, PT (comma-separated) or 'all'")
        return codes

    def working_size(self):
        """The ``size`` argument of ``Translator.working_scale``: None, "native" or an int."""
        if self.size is None or str(self.size).lower() in ("auto", "learned"):
            return None
        return "native" if str(self.size).lower() == "native" else int(self.size)

    def size_chosen(self) -> bool:
        """``--size`` chose the working scale (learned, native or N; not the default / auto)."""
        return self.size is not None and str(self.size).lower() != "auto"
