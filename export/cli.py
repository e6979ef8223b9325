def main(argv=None):
    raise SystemExit("qwen-mobile: not implemented yet")
