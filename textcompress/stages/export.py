"""Stage `export@<candidate>`: ONNX export, the parity check, then the recipe's export-time
steps (quantization; a `qat` model made into int8) in order, each on the file the last wrote.

The fp32 export is the parent: a model trained fake-quantized is exported with the roundings
off, and a candidate whose steps changed the file keeps the parent beside it, so the benchmark
can time both and the report can check their agreement."""

import shutil
from pathlib import Path

from textcompress import catalog
from textcompress.data import load_split
from textcompress.deploy.export import PARENT_FILE, compressed_size_bytes, export_onnx, label_agreement, parity_max_abs_diff
from textcompress.fileio import atomic_dir, write_json
from textcompress.deploy.hf_folder import write_transformers_files
from textcompress.deploy.inference import MODEL_FILE, split_for_model
from textcompress.models.encoder import load_bundle, set_fake_quant
from textcompress.stages import run_stage
from textcompress.techniques import ExportContext, candidate_recipe


def main(argv=None):
    """Writes the candidate's ONNX folder (model, fp32 parent where they differ, tokenizer, labels,
    export.json with parity, agreement and each export step's details) to --out."""
    def add(parser):
        parser.add_argument("candidate")
        parser.add_argument("--prepared", default=str(catalog.PREPARED))
        parser.add_argument("--model", required=True)
        parser.add_argument("--out", required=True)

    def body(params, args):
        cfg, recipe = params["export"], candidate_recipe(params, args.candidate)
        model, labels = load_bundle(args.model)
        validation = split_for_model(load_split(args.prepared, "validation"), args.prepared, args.model,
                                     params["data"]["max_length"])
        ctx = ExportContext(Path(args.prepared), Path(args.model), params["data"]["max_length"], recipe.trained_seed(params["seed"]),
                            model, validation, cfg["opset"])
        set_fake_quant(model, False)
        with atomic_dir(args.out) as tmp:
            fp32 = tmp / "fp32.onnx"
            export_onnx(model, fp32, cfg["opset"])
            parity = parity_max_abs_diff(model, fp32, validation)
            report = {"parity_max_abs_diff": parity, "parity_ok": parity <= cfg["parity_tolerance"],
                      "parity_tolerance": cfg["parity_tolerance"], "steps": []}
            current = fp32
            for step in recipe.export_steps:
                result = tmp / f"step{step.position}-{step.name}.onnx"
                details = step.technique.export(current, result, dict(step.args), ctx)
                report["steps"].append(step.record(details))
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
            # The folder Optimum's ONNX classifiers use: config.json (id2label) and the tokenizer's configs.
            write_transformers_files(tmp, model, labels, tmp / "tokenizer.json", params["data"]["max_length"])
            write_json(tmp / "export.json", report)
        print(f"{args.candidate}: parity {parity:.2e}" + (f", agreement with fp32 {report['label_agreement_with_fp32']:.4f}"
                                                          if "label_agreement_with_fp32" in report else ""))

    run_stage(__doc__, add, body, argv)


if __name__ == "__main__":
    main()
