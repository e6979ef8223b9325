"""`python -m qwen_mobile.export.cli`: the same as the `qwen-mobile` command."""

from . import main

raise SystemExit(main())
