import Foundation

/// The constraints of runtime/schemas/manifest.schema.json (version 2) that a runtime depends on, checked with the
/// error paths jsonschema reports: a missing property is reported at the object that lacks it ("tokenizer",
/// "(top level)"), a bad value at the value ("recipe/qlinear"). The shared vectors (tests/apps/vectors/
/// manifest_cases.json) hold Python's verdict and path for each case; the XCTests compare.
enum ManifestSchema {
  static func validate(_ root: JSONNode) throws {
    try requireObject(
      root,
      [
        "schema_version", "format", "toolkit_version", "model", "recipe", "program", "state",
        "tokenizer", "files",
      ])
    guard (try? root["schema_version"].int()) == 2 else { throw root["schema_version"].fail("must be 2") }
    guard (try? root["format"].string()) == "qwen-mobile-bundle" else {
      throw root["format"].fail("must be 'qwen-mobile-bundle'")
    }
    _ = try root["toolkit_version"].string()

    let model = root["model"]
    try requireObject(model, ["id", "source", "params", "config"])
    guard try model["id"].string().count >= 1 else { throw model["id"].fail("must not be empty") }
    _ = try model["source"].string()
    guard try model["params"].int() >= 1 else { throw model["params"].fail("must be >= 1") }
    if model["random_weights"].exists { _ = try model["random_weights"].bool() }
    try requireObject(model["config"], ["vocab_size", "hidden_size", "num_hidden_layers", "layer_types"])

    let recipe = root["recipe"]
    try requireObject(recipe, ["name", "backend", "qlinear", "qembedding", "group_size"])
    try oneOf(recipe["name"], ["xnnpack", "coreml", "coreml-pte"])
    _ = try recipe["backend"].string()
    try oneOf(recipe["qlinear"], ["fp32", "fp16", "8da4w", "8da8w", "8w", "4w"])
    try oneOf(recipe["qembedding"], ["none", "8w", "4w"])
    guard [32, 64, 128].contains(try? recipe["group_size"].int()) else {
      throw recipe["group_size"].fail("must be one of 32, 64, 128")
    }
    if recipe["tied_table_copies"].exists {
      let n = try recipe["tied_table_copies"].int()
      guard (1...2).contains(n) else { throw recipe["tied_table_copies"].fail("must be 1 or 2") }
    }

    let program = root["program"]
    try requireObject(program, ["file", "methods", "op_namespace", "kernel_namespaces"])
    _ = try program["file"].string()
    guard (try? program["op_namespace"].string()) == "qwen35" else {
      throw program["op_namespace"].fail("must be 'qwen35'")
    }
    for ns in try program["kernel_namespaces"].array() { _ = try ns.string() }
    let methods = program["methods"]
    try requireObject(methods, [Manifest.prefillMethod, Manifest.decodeMethod])
    for key in try methods.keys() {
      let m = methods[key]
      try requireObject(m, ["inputs", "outputs"])
      var tokenBounds = true  // every method but the state and image-encoder ones takes a token count
      if m["kind"].exists {
        let kinds = [
          "prefill", "decode", "state_read", "state_write", "embed", "prefill_embeddings", "decode_rope",
          "encode_image",
        ]
        try oneOf(m["kind"], kinds)
        tokenBounds = !["state_read", "state_write", "encode_image"].contains(try m["kind"].string())
      }
      if tokenBounds { try requireObject(m, ["min_tokens", "max_tokens"]) }
      for bound in ["min_tokens", "max_tokens"] where m[bound].exists {
        guard try m[bound].int() >= 1 else { throw m[bound].fail("must be >= 1") }
      }
      for side in ["inputs", "outputs"] {
        for t in try m[side].array() {
          try requireObject(t, ["name", "shape", "dtype"])
          _ = try t["name"].string()
          _ = try t["dtype"].string()
          for dim in try t["shape"].array() where !(dim.value is String) { _ = try dim.int() }
        }
      }
    }

    let state = root["state"]
    try requireObject(state, ["max_seq_len", "max_batch_size", "buffers", "shared_between_methods", "reset"])
    guard try state["max_seq_len"].int() >= 1 else { throw state["max_seq_len"].fail("must be >= 1") }
    guard (try? state["max_batch_size"].int()) == 1 else { throw state["max_batch_size"].fail("must be 1") }
    guard (try? state["shared_between_methods"].bool()) == true else {
      throw state["shared_between_methods"].fail("must be true")
    }
    _ = try state["reset"].string()
    for buffer in try state["buffers"].array() {
      try requireObject(buffer, ["name", "shape", "dtype"])
      for dim in try buffer["shape"].array() {
        guard try dim.int() >= 1 else { throw dim.fail("must be >= 1") }
      }
      if buffer["seq_axis"].exists { _ = try buffer["seq_axis"].int() }
    }

    let tokenizer = root["tokenizer"]
    try requireObject(tokenizer, ["file", "stop_ids"])
    _ = try tokenizer["file"].optionalString()
    // May be empty: a model without an end-of-sequence token stops only at the token limit (manifest schema).
    for s in try tokenizer["stop_ids"].array() { _ = try s.int() }
    if tokenizer["thinking_default"].exists { _ = try tokenizer["thinking_default"].bool() }
    if tokenizer["bos_id"].exists { _ = try tokenizer["bos_id"].int() }

    let files = root["files"]
    let names = try files.keys()
    guard !names.isEmpty else { throw files.fail("must list at least one file") }
    for name in names {
      let entry = files[name]
      try requireObject(entry, ["sha256", "bytes"])
      let digest = try entry["sha256"].string()
      guard digest.count == 64, digest.allSatisfy({ "0123456789abcdef".contains($0) }) else {
        throw entry["sha256"].fail("not a lower-case hex sha256")
      }
      guard try entry["bytes"].int() >= 0 else { throw entry["bytes"].fail("must be >= 0") }
    }

    if root["sample_prompt"].exists {
      let prompt = root["sample_prompt"]
      try requireObject(prompt, ["ids"])
      let ids = try prompt["ids"].array()
      guard !ids.isEmpty else { throw prompt["ids"].fail("must not be empty") }
      for id in ids {
        guard try id.int() >= 0 else { throw id.fail("must be >= 0") }
      }
    }

    if root["vision"].exists {
      let vision = root["vision"]
      try requireObject(
        vision,
        [
          "image_token_id", "vision_start_token_id", "vision_end_token_id", "patch_size", "spatial_merge_size",
          "temporal_patch_size", "pixels", "images", "methods",
        ])
      for key in ["image_token_id", "vision_start_token_id", "vision_end_token_id"] {
        guard try vision[key].int() >= 0 else { throw vision[key].fail("must be >= 0") }
      }
      for key in ["patch_size", "spatial_merge_size", "temporal_patch_size"] {
        guard try vision[key].int() >= 1 else { throw vision[key].fail("must be >= 1") }
      }
      try requireObject(vision["pixels"], ["dtype", "layout"])
      try oneOf(vision["pixels"]["dtype"], ["uint8"])
      try oneOf(vision["pixels"]["layout"], ["HWC-RGB"])
      let images = try vision["images"].array()
      guard !images.isEmpty else { throw vision["images"].fail("must list at least one size") }
      for image in images {
        try requireObject(image, ["method", "height", "width", "grid_thw", "tokens"])
        for key in ["height", "width", "tokens"] {
          guard try image[key].int() >= 1 else { throw image[key].fail("must be >= 1") }
        }
        guard try image["grid_thw"].ints().count == 3 else { throw image["grid_thw"].fail("must hold 3 integers") }
      }
      try requireObject(vision["methods"], ["embed", "prefill", "decode"])
    }
  }

  static func requireObject(_ node: JSONNode, _ required: [String]) throws {
    let object = try node.object()
    for key in required where object[key] == nil {
      throw node.fail("'\(key)' is a required property")
    }
  }

  static func oneOf(_ node: JSONNode, _ allowed: [String]) throws {
    let value = try node.string()
    guard allowed.contains(value) else { throw node.fail("'\(value)' is not one of \(allowed)") }
  }
}
