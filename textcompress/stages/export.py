"""Stage `export@<candidate>`: ONNX export, the parity check, then ONNX-level steps (quantization).

A quantization-aware model (the `qat` step) is exported twice: in fp32 (the parent, checked for
parity like any export) and fake-quantized, made into an int8 file that becomes the model."""

import shutil
from functools import cached_property
from pathlib import Path

from textcompress.data import load_split
from textcompress.export import PARENT_FILE, compressed_size_bytes, export_onnx, label_agreement, parity_max_abs_diff
from textcompress.fileio import atomic_dir, write_json
from textcompress.inference import MODEL_FILE, make_session, split_for_model, split_logits
from textcompress.modeling import load_bundle, set_fake_quant
from textcompress.quantization import int8_from_fake_quant
from textcompress.training import predict_logits
from textcompress.stages import run_stage
from textcompress.stages.compress import candidate_recipe
from textcompress.techniques import parse_step


class ExportContext:
    """What an ONNX-level step may use: training sentences (for calibration), loaded on first use
    and tokenized the way the candidate's tokenizer does."""

    def __init__(self, prepared: Path, model_dir: Path, max_length: int, seed: int):
        self.prepared, self.model_dir, self.max_length, self.seed = prepared, model_dir, max_length, seed

    @cached_property
    def train(self):
        return split_for_model(load_split(self.prepared, "train"), self.prepared, self.model_dir, self.max_length)


def export_int8_from_qat(model, tmp: Path, validation, opset: int) -> tuple[Path, dict]:
    """The fake-quantized model as an int8 ONNX file, and how closely it follows PyTorch's fake-quant model."""
    set_fake_quant(model, True)
    fake_quant, int8 = tmp / "fake-quant.onnx", tmp / "qat.onnx"
    export_onnx(model, fake_quant, opset)
    details = int8_from_fake_quant(fake_quant, int8)
    torch_labels = predict_logits(model, validation).argmax(-1)
    onnx_labels = split_logits(make_session(int8), validation).argmax(-1)
    details.update(max_abs_diff_to_fake_quant=parity_max_abs_diff(model, int8, validation),
                   label_agreement_with_fake_quant=float((torch_labels == onnx_labels).mean()))
    return int8, {"technique": "qat", "family": "quantization", "args": {}, "details": details}


def main(argv=None):
    def add(parser):
        parser.add_argument("candidate")
        parser.add_argument("--prepared", default="artifacts/prepared")
        parser.add_argument("--model", required=True)
        parser.add_argument("--out", required=True)

    def body(params, args):
        cfg, recipe = params["export"], candidate_recipe(params, args.candidate)
        model, _ = load_bundle(args.model)
        validation = split_for_model(load_split(args.prepared, "validation"), args.prepared, args.model,
                                     params["data"]["max_length"])
        ctx = ExportContext(Path(args.prepared), Path(args.model), params["data"]["max_length"], params["seed"])
        quantization_aware = set_fake_quant(model, False) > 0
        with atomic_dir(args.out) as tmp:
            fp32 = tmp / "fp32.onnx"
            export_onnx(model, fp32, cfg["opset"])
            parity = parity_max_abs_diff(model, fp32, validation)
            report = {"parity_max_abs_diff": parity, "parity_ok": parity <= cfg["parity_tolerance"],
                      "parity_tolerance": cfg["parity_tolerance"], "steps": []}
            current = fp32
            if quantization_aware:
                current, step = export_int8_from_qat(model, tmp, validation, cfg["opset"])
                report["steps"].append(step)
            for position, step in enumerate(recipe):
                technique, step_args = parse_step(step)
                if technique.stage != "export":
                    continue
                result = tmp / f"step{position}-{technique.name}.onnx"
                details = technique.apply_fn()(current, result, step_args, ctx)
                report["steps"].append({"technique": technique.name, "family": technique.family, "args": step_args, "details": details})
                current = result
            if current != fp32:
                agreement = label_agreement(fp32, current, validation)
                report.update(label_agreement_with_fp32=agreement, agreement_gate=cfg["agreement_gate"],
                              agreement_ok=agreement >= cfg["agreement_gate"])
            current.rename(tmp / MODEL_FILE)
            if current != fp32:  # the benchmark times the parent too: a quantized model must be faster
                fp32.rename(tmp / PARENT_FILE)
            for leftover in tmp.glob("*.onnx"):
                if leftover.name not in (MODEL_FILE, PARENT_FILE):
                    leftover.unlink()
            report["compressed_bytes"] = compressed_size_bytes(tmp / MODEL_FILE)
            for name in ("tokenizer.json", "labels.json"):
                shutil.copyfile(Path(args.model) / name, tmp / name)
            write_json(tmp / "export.json", report)
        print(f"{args.candidate}: parity {parity:.2e}" + (f", agreement with fp32 {report['label_agreement_with_fp32']:.4f}"
                                                          if "label_agreement_with_fp32" in report else ""))

    run_stage(__doc__, add, body, argv)


if __name__ == "__main__":
    main()
