"""Peers of qwen-mobile's exporter, measured on the same random checkpoint: upstream ExecuTorch and llama.cpp.

Run from the repo root: `python -m bench.peers.run_peers --help`. Import: `from bench.peers import llamacpp`
(repo root on sys.path) or `from peers import ...` from a script in bench/.
"""
