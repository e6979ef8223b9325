#!/usr/bin/env python3
"""Run a qwen-mobile Core ML bundle through MLModel.predict on a Mac and compare it with eager torch.

    pip install -e ".[coreml]"
    python scripts/verify_coreml_on_mac.py BUNDLE [--compute-units ALL|CPU_ONLY|CPU_AND_GPU|CPU_AND_NE]
                                                  [--steps N] [--also-evaluator]

The logic lives in qwen_mobile.export.coreml.mac_verify (also `python -m qwen_mobile.export.coreml.mac_verify`).
"""

import sys

from qwen_mobile.export.coreml.mac_verify import main

if __name__ == "__main__":
    sys.exit(main())
