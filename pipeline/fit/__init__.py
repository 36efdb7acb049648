"""Will a model fit a board, and how fast does it run there: the boards bnpipe knows, as data
(`boards.toml`, read by `boards`), Arm's Vela compiler run for an Ethos-U NPU in a child process
(`vela`), what a microcontroller running TFLite Micro needs (`mcu`), and the verdicts as a
Markdown table and a chart (`report`).

May import: `tflite`, `runtimes`, `report`, `store` and `core`.
"""
