import Foundation
import QwenMobileAppLogic
import QwenMobileKit
import XCTest

/// The chat's image button logic: when it is enabled, the attachment line, the decode size plan, and one image going
/// with the next turn only (its prompt ids written out by hand from Qwen's chat template, as the Android test does).
final class ImageAttachmentTests: XCTestCase {
  /// The nano vector's manifest with a vision section of these (height, width) sizes (16-pixel patches, merge 2).
  static func visionManifest(_ sizes: [(Int, Int)]) throws -> Manifest {
    let url = repoRoot.appendingPathComponent("tests/apps/vectors/engine_plan_pte.json")
    var root = try JSONNode.load(url)["manifest"].object()
    var program = root["program"] as! [String: Any]
    var methods = program["methods"] as! [String: Any]
    let out: [[String: Any]] = [["name": "out", "shape": [1], "dtype": "float32"]]
    for (name, kind) in [
      ("embed_tokens", "embed"), ("prefill_embeddings", "prefill_embeddings"), ("decode_token_rope", "decode_rope"),
    ] {
      methods[name] = ["kind": kind, "inputs": out, "outputs": out, "min_tokens": 1, "max_tokens": 8]
    }
    var images: [[String: Any]] = []
    for (h, w) in sizes {
      methods["encode_image_\(h)x\(w)"] = ["kind": "encode_image", "inputs": out, "outputs": out]
      images.append([
        "method": "encode_image_\(h)x\(w)", "height": h, "width": w, "grid_thw": [1, h / 16, w / 16],
        "tokens": h / 16 * w / 16 / 4,
      ])
    }
    program["methods"] = methods
    root["program"] = program
    root["vision"] =
      [
        "image_token_id": 150, "vision_start_token_id": 152, "vision_end_token_id": 153, "patch_size": 16,
        "spatial_merge_size": 2, "temporal_patch_size": 2, "pixels": ["dtype": "uint8", "layout": "HWC-RGB"],
        "images": images,
        "methods": ["embed": "embed_tokens", "prefill": "prefill_embeddings", "decode": "decode_token_rope"],
      ] as [String: Any]
    return try Manifest(json: try JSONNode.parse(try JSONWriter.data(root), source: "vision.json"))
  }

  /// An image engine whose argmax follows `script` within a turn (prefill restarts it); records what it was given.
  final class ScriptedImageEngine: ImageInferenceEngine {
    let planner: EnginePlanner
    let hidden: Int
    var runtimeDescription: String { "scripted image engine" }
    let script: [Int]
    var produced = 0
    var encoded: [String] = []
    var embedded: [[Int]] = []
    var textSteps = 0

    init(manifest: Manifest, script: [Int]) throws {
      planner = try EnginePlanner(manifest: manifest)
      hidden = manifest.hiddenSize!
      self.script = script
    }
    func logits() -> [Float] {
      var l = [Float](repeating: 0, count: planner.manifest.vocabSize)
      l[script[produced % script.count]] = 1
      return l
    }
    func execute(_ step: PlannedStep) throws -> [Float] {
      textSteps += 1
      produced = step.kind == .prefill ? 0 : produced + 1
      return logits()
    }
    func encodeImage(_ rgb: [UInt8], size: ImageSizeSpec) throws -> [Float] {
      encoded.append(size.method)
      return [Float](repeating: 0.5, count: size.tokens * hidden)
    }
    func embed(_ ids: [Int]) throws -> [Float] {
      embedded.append(ids)
      return [Float](repeating: 0, count: ids.count * hidden)
    }
    func prefillEmbeddings(_ embeds: [Float], start: Int, rope: [Int]) throws -> [Float] {
      produced = 0
      return logits()
    }
    func decodeRope(_ token: Int, slot: Int, rope: Int) throws -> [Float] {
      produced += 1
      return logits()
    }
  }

  func nano() throws -> BPETokenizer {
    try BPETokenizer(url: repoRoot.appendingPathComponent("models/nano/tokenizer.json"))
  }

  func testTheImageButtonNeedsAVisionBundleAndAnImageEngine() throws {
    let tokenizer = try nano()
    let textOnly = ChatController(
      engine: try ScriptedEngine(manifest: try nanoManifest(), script: [5]), tokenizer: tokenizer, thinking: false)
    let noVision =
      "images: this bundle has no vision section (exported from a text-only checkpoint or with --no-vision): it "
      + "takes text only"
    XCTAssertEqual(textOnly.imagesUnavailableReason, noVision)
    XCTAssertEqual(textOnly.imageLine, noVision)
    XCTAssertNil(textOnly.vision)
    let manifest = try Self.visionManifest([(64, 128)])
    let image = try ImageAttachment(
      photoWidth: 1280, photoHeight: 640,
      image: try ImageRGB(width: 128, height: 64, rgb: .init(repeating: 1, count: 64 * 128 * 3)),
      vision: manifest.vision!)
    XCTAssertThrowsError(try textOnly.attach(image)) { XCTAssertEqual("\($0)", noVision) }
    XCTAssertNil(textOnly.attachment)

    let textEngine = ChatController(
      engine: try ScriptedEngine(manifest: manifest, script: [5]), tokenizer: tokenizer, thinking: false)
    XCTAssertEqual(textEngine.imagesUnavailableReason, "images: scripted does not run a bundle's image methods yet")
    XCTAssertNil(textEngine.vision)

    let chat = ChatController(
      engine: try ScriptedImageEngine(manifest: manifest, script: [5]), tokenizer: tokenizer, thinking: false)
    XCTAssertNil(chat.imagesUnavailableReason)
    XCTAssertEqual(chat.vision, manifest.vision)
    XCTAssertEqual(chat.imageLine, "no image attached")
  }

  func testTheAttachmentLine() throws {
    let vision = try Self.visionManifest([(224, 224), (224, 448)]).vision!
    let wide = try ImageRGB(width: 448, height: 224, rgb: .init(repeating: 0, count: 224 * 448 * 3))
    let photo = try ImageAttachment(photoWidth: 4032, photoHeight: 2016, orientation: 6, image: wide, vision: vision)
    XCTAssertEqual(
      photo.statusLine, "image attached: 4032x2016 (WxH) -> 224x448 (HxW), 98 image tokens, EXIF orientation 6 applied")
    XCTAssertEqual(photo.transcriptMark, "[image 224x448]")
    XCTAssertFalse(photo.upscaled)
    let square = try ImageRGB(width: 224, height: 224, rgb: .init(repeating: 0, count: 224 * 224 * 3))
    let small = try ImageAttachment(photoWidth: 100, photoHeight: 100, image: square, vision: vision)
    XCTAssertTrue(small.upscaled)
    XCTAssertEqual(
      small.statusLine,
      "image attached: 100x100 (WxH) -> 224x224 (HxW), 49 image tokens, upscaled: smaller than every size of its shape")
    let odd = try ImageRGB(width: 448, height: 448, rgb: .init(repeating: 0, count: 448 * 448 * 3))
    XCTAssertThrowsError(try ImageAttachment(photoWidth: 900, photoHeight: 900, image: odd, vision: vision)) {
      XCTAssertTrue("\($0)".hasPrefix("image: 448x448 (HxW) pixels; this bundle encodes 224x224, 224x448"), "\($0)")
    }
  }

  func testTheDecodeSizeKeepsTheRulesChoice() throws {
    XCTAssertTrue(ImageDecodePlan.upright(width: 4032, height: 3024, orientation: 6) == (3024, 4032))
    XCTAssertTrue(ImageDecodePlan.upright(width: 4032, height: 3024, orientation: 8) == (3024, 4032))
    XCTAssertTrue(ImageDecodePlan.upright(width: 4032, height: 3024, orientation: 3) == (4032, 3024))
    XCTAssertTrue(ImageDecodePlan.upright(width: 4032, height: 3024, orientation: 1) == (4032, 3024))
    let three = try Self.visionManifest([(224, 224), (224, 448), (448, 224)]).vision!
    // By hand: 4032x3024 goes to 224x224; 224/3024 of 4032 is 298.7, so 299 (short side 224.25 -> 224 or 225).
    XCTAssertEqual(try ImageDecodePlan.maxPixelSize(width: 4032, height: 3024, vision: three), 299)
    let four = try Self.visionManifest([(224, 224), (448, 448)]).vision!
    // 448x448 fits: 448/3024 of 4032 is 597.3, so 598.
    XCTAssertEqual(try ImageDecodePlan.maxPixelSize(width: 4032, height: 3024, vision: four), 598)
    XCTAssertEqual(try ImageDecodePlan.maxPixelSize(width: 3024, height: 4032, vision: four), 598)
    XCTAssertEqual(try ImageDecodePlan.maxPixelSize(width: 100, height: 100, vision: four), 100)  // upscaled: whole
    XCTAssertEqual(try ImageDecodePlan.maxPixelSize(width: 300, height: 300, vision: four), 224)

    // Every photo shape: both roundings of the short side keep at least the chosen size and the same choice, and one
    // pixel less would not (checked by brute force, not by the function's own formula).
    for vision in [three, four] {
      for (w, h) in [(4032, 3024), (3024, 4032), (1000, 999), (2000, 1001), (640, 480), (5000, 1200), (230, 460)] {
        let target = try vision.chooseSize(height: h, width: w)
        let side = try ImageDecodePlan.maxPixelSize(width: w, height: h, vision: vision)
        func keeps(_ side: Int) -> Bool {
          let (long, short) = (max(w, h), min(w, h))
          return [short * side / long, (short * side + long - 1) / long].allSatisfy { s in
            let (dw, dh) = w >= h ? (side, s) : (s, side)
            return dw >= target.width && dh >= target.height
              && (try? vision.chooseSize(height: dh, width: dw)) == target
          }
        }
        XCTAssertTrue(side == max(w, h) || keeps(side), "\(w)x\(h) at \(side)")
        XCTAssertFalse(side > 1 && side < max(w, h) && keeps(side - 1), "\(w)x\(h): \(side - 1) would do")
      }
    }
  }

  func testTheImageGoesWithTheNextTurnOnly() throws {
    let tokenizer = try nano()
    let imEnd = tokenizer.id(of: "<|im_end|>")!
    let manifest = try Self.visionManifest([(64, 128)])
    let engine = try ScriptedImageEngine(manifest: manifest, script: [5, imEnd])
    let chat = ChatController(engine: engine, tokenizer: tokenizer, thinking: false)
    let rgb = try ImageRGB(width: 128, height: 64, rgb: .init(repeating: 9, count: 64 * 128 * 3))
    try chat.attach(try ImageAttachment(photoWidth: 1280, photoHeight: 640, image: rgb, vision: manifest.vision!))
    XCTAssertEqual(chat.imageLine, "image attached: 1280x640 (WxH) -> 64x128 (HxW), 8 image tokens")
    try chat.send("What is this?")
    XCTAssertEqual(engine.encoded, ["encode_image_64x128"])
    XCTAssertNil(chat.attachment)
    XCTAssertEqual(chat.imageLine, "no image attached")
    XCTAssertEqual(chat.messages.map(\.image), ["[image 64x128]", nil])
    XCTAssertEqual(chat.messages[1].text, tokenizer.decode([5]))
    XCTAssertTrue(chat.messages[1].stats?.hasSuffix(", 8 tokens)") ?? false, "\(chat.messages[1].stats ?? "-")")
    // Qwen's template: the image span before the question, its one token expanded to the image's 8.
    let turn1 =
      try tokenizer.encode("<|im_start|>user\n") + [152] + [Int](repeating: 150, count: 8) + [153]
      + tokenizer.encode("What is this?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    XCTAssertEqual(engine.embedded.flatMap { $0 }, turn1)

    let before = engine.embedded.count
    try chat.send("And the colour?")
    XCTAssertEqual(engine.encoded.count, 1, "the second turn carries no image")
    XCTAssertEqual(chat.messages.map(\.image), ["[image 64x128]", nil, nil, nil])
    // The reply's pending <|im_end|>, the closing newline, the next user turn (through the embeddings path: the
    // session holds an image, so its rotary positions run behind the cache slots).
    let turn2 =
      [imEnd]
      + (try tokenizer.encode(
        "\n<|im_start|>user\nAnd the colour?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"))
    XCTAssertEqual(engine.embedded[before...].flatMap { $0 }, turn2)
    XCTAssertEqual(engine.textSteps, 0)

    // Cleared before sending: nothing goes (in a new chat: the vector's context is 64 tokens).
    chat.reset()
    try chat.attach(try ImageAttachment(photoWidth: 1280, photoHeight: 640, image: rgb, vision: manifest.vision!))
    chat.clearAttachment()
    try chat.send("Bye")
    XCTAssertEqual(engine.encoded.count, 1)
  }
}
