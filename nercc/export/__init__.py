"""Exporting models to ONNX: the built-in ones (`nercc export`) and a user's torch module (:func:`export_module`)."""


def __getattr__(name):
    if name == "export_module":  # torch is imported only when it is used
        from nercc.export.module import export_module

        return export_module
    raise AttributeError(f"module 'nercc.export' has no attribute {name!r}")
