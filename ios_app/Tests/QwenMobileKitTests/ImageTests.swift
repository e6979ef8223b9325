import Foundation
import XCTest

@testable import QwenMobileKit

/// The image half of the app that runs anywhere (runtime/CONTRACT.md, "Images"): the size rule, RGBA/RGBX packing,
/// the manifest's vision section, the prompt layout, and GenerationSession driving an image engine through steps 1-5
/// (checked against positions worked out by hand, the same case qwen-bench's test checks).
final class ImageTests: XCTestCase {
  func sizes(_ hw: [(Int, Int)]) -> [ImageSizeSpec] {
    hw.map {
      ImageSizeSpec(method: "encode_image_\($0.0)x\($0.1)", height: $0.0, width: $0.1, gridTHW: [1, 2, 2], tokens: 1)
    }
  }

  func chosen(_ h: Int, _ w: Int, _ s: [ImageSizeSpec]) throws -> String {
    try ImageSizeRule.choose(height: h, width: w, sizes: s).description
  }

  /// Worked out by hand from the rule; runtime/images.py choose_image_size gives the same on these inputs.
  func testSizeRule() throws {
    let s = sizes([(224, 224), (448, 448), (224, 448), (448, 224)])
    XCTAssertEqual(try chosen(1000, 1000, s), "448x448")  // both squares fit: the larger
    XCTAssertEqual(try chosen(300, 300, s), "224x224")  // 448^2 would upscale 300^2
    XCTAssertEqual(try chosen(100, 100, s), "224x224")  // none fits: the smallest of the closest shape
    XCTAssertEqual(try chosen(500, 1000, s), "224x448")
    XCTAssertEqual(try chosen(100, 150, s), "224x448")  // aspect 1.5 is nearer 2 (0.29) than 1 (0.41)
    XCTAssertEqual(try chosen(1000, 1005, s), "448x448")
    XCTAssertEqual(try chosen(2000, 800, s), "448x224")
    XCTAssertEqual(try chosen(640, 480, s), "448x448")
    // Within 1 % of log-aspect is the same shape: the larger 100x101 wins when it fits, the smaller when none does.
    XCTAssertEqual(try chosen(1000, 1000, sizes([(100, 100), (100, 101)])), "100x101")
    XCTAssertEqual(try chosen(1000, 1000, sizes([(100, 100), (100, 102)])), "100x100")
    XCTAssertEqual(try chosen(50, 50, sizes([(100, 101), (100, 100)])), "100x100")
    XCTAssertThrowsError(try chosen(10, 10, [])) { XCTAssertEqual("\($0)", "the bundle lists no image sizes") }
  }

  func testPacking() throws {
    // 3 pixels: opaque (1,2,3), transparent black, half-alpha (128) black; straight alpha over white.
    let straight = try ImageRGB(
      rgba: [1, 2, 3, 255, 0, 0, 0, 0, 0, 0, 0, 128], width: 3, height: 1, premultiplied: false)
    XCTAssertEqual(straight.rgb, [1, 2, 3, 255, 255, 255, 127, 127, 127])
    // Premultiplied: half-alpha red is stored (128, 0, 0, 128); over white 128 + 127 = 255, 0 + 127 = 127.
    let pre = try ImageRGB(rgba: [128, 0, 0, 128], width: 1, height: 1, premultiplied: true)
    XCTAssertEqual(pre.rgb, [255, 127, 127])
    let rgbx = try ImageRGB(rgbx: [9, 8, 7, 0, 6, 5, 4, 200], width: 1, height: 2)
    XCTAssertEqual(rgbx.rgb, [9, 8, 7, 6, 5, 4])
    XCTAssertThrowsError(try ImageRGB(width: 3, height: 2, rgb: [UInt8](repeating: 0, count: 17))) {
      XCTAssertEqual("\($0)", "rgb: 17 bytes; a 2x3 (HxW) RGB image has 18")
    }
  }

  static func visionManifest(images: [(Int, Int, [Int], Int)] = [(64, 128, [1, 4, 8], 8), (32, 32, [1, 2, 2], 1)])
    throws -> Manifest
  {
    var root = try loadVector("engine_plan_pte.json")["manifest"].object()
    var program = root["program"] as! [String: Any]
    var methods = program["methods"] as! [String: Any]
    func method(_ kind: String, _ inputs: [[String: Any]], bounds: Bool = true) -> [String: Any] {
      var m: [String: Any] = [
        "kind": kind, "inputs": inputs, "outputs": [["name": "out", "shape": [1], "dtype": "float32"]],
      ]
      if bounds { m["min_tokens"] = 1; m["max_tokens"] = kind == "decode_rope" ? 1 : 8 }
      return m
    }
    methods["embed_tokens"] = method("embed", [["name": "tokens", "shape": [1, "T"], "dtype": "int64"]])
    methods["prefill_embeddings"] = method(
      "prefill_embeddings", [["name": "embeds", "shape": [1, "T", 256], "dtype": "float32"]])
    methods["decode_token_rope"] = method("decode_rope", [["name": "tokens", "shape": [1, 1], "dtype": "int64"]])
    var list: [[String: Any]] = []
    for (h, w, grid, tokens) in images {
      methods["encode_image_\(h)x\(w)"] = method(
        "encode_image", [["name": "rgb", "shape": [h, w, 3], "dtype": "uint8"]], bounds: false)
      list.append(["method": "encode_image_\(h)x\(w)", "height": h, "width": w, "grid_thw": grid, "tokens": tokens])
    }
    program["methods"] = methods
    root["program"] = program
    root["vision"] =
      [
        "image_token_id": 150, "vision_start_token_id": 152, "vision_end_token_id": 153, "patch_size": 16,
        "spatial_merge_size": 2, "temporal_patch_size": 2, "pixels": ["dtype": "uint8", "layout": "HWC-RGB"],
        "images": list,
        "methods": ["embed": "embed_tokens", "prefill": "prefill_embeddings", "decode": "decode_token_rope"],
      ] as [String: Any]
    return try Manifest(json: try JSONNode.parse(try JSONWriter.data(root), source: "vision.json"))
  }

  /// Pixels of runtime/images.py synthetic_image(20, 30), printed by Python: (row, column) -> R, G, B.
  func testTestCardIsTheHostsSyntheticImage() {
    let card = ImageRGB.testCard(height: 20, width: 30)
    let want: [(Int, Int, [UInt8])] = [
      (0, 0, [0, 0, 28]), (19, 29, [255, 255, 228]), (7, 8, [93, 70, 228]), (8, 7, [107, 61, 228]),
      (10, 15, [134, 131, 28]), (16, 16, [214, 140, 28]),
    ]
    for (r, c, rgb) in want {
      let i = 3 * (r * 30 + c)
      XCTAssertEqual(Array(card.rgb[i..<(i + 3)]), rgb, "pixel \(r),\(c)")
    }
  }

  func testManifestVisionSection() throws {
    XCTAssertNil(try Manifest(json: try loadVector("engine_plan_pte.json")["manifest"]).vision)
    let m = try ImageTests.visionManifest()
    let v = try XCTUnwrap(m.vision)
    XCTAssertEqual([v.imageTokenID, v.visionStartTokenID, v.visionEndTokenID, v.spatialMergeSize], [150, 152, 153, 2])
    XCTAssertEqual(v.images.map(\.description), ["64x128", "32x32"])
    XCTAssertEqual(m.hiddenSize, 256)
    XCTAssertEqual(try v.chooseSize(height: 480, width: 1000).description, "64x128")
    XCTAssertThrowsError(try v.size(height: 128, width: 64)) {
      XCTAssertTrue(
        "\($0)".hasPrefix("image: 128x64 (HxW) pixels; this bundle encodes 64x128, 32x32 (HxW) only"), "\($0)")
    }
    XCTAssertThrowsError(try ImageTests.visionManifest(images: [(64, 128, [1, 4, 8], 9)])) {
      XCTAssertEqual(fieldOf($0), "vision/images/0/tokens", "\($0)")
    }
  }

  /// 64x128 pixels = 4x8 patches = a 2x4 merged grid. After text (0, 1) and vision_start (2), image token k sits at
  /// (3, 3 + k/4, 3 + k%4); p then advances by max(2, 4) = 4: vision_end at 7, the last text token at 8.
  static let handPrompt = [9, 8, 152, 150, 153, 7]
  static let handRope = [
    [0, 1, 2, 3, 3, 3, 3, 3, 3, 3, 3, 7, 8],
    [0, 1, 2, 3, 3, 3, 3, 4, 4, 4, 4, 7, 8],
    [0, 1, 2, 3, 4, 5, 6, 3, 4, 5, 6, 7, 8],
  ]

  func testLayoutByHand() throws {
    let m = try ImageTests.visionManifest()
    let v = m.vision!
    let l = try ImagePromptLayout(ids: ImageTests.handPrompt, image: v.images[0], ropeStart: 0, vision: v)
    XCTAssertEqual(l.tokens, [9, 8, 152] + [Int](repeating: 150, count: 8) + [153, 7])
    XCTAssertEqual(l.rope, ImageTests.handRope.flatMap { $0 })
    XCTAssertEqual(l.imageRange, 3..<11)
    XCTAssertEqual(l.nextRope, 9)
    // A pending image-token id before the searched part is text; two placeholders are refused.
    let cont = try ImagePromptLayout(
      ids: [150, 152, 150, 153], firstSearched: 1, image: v.images[1], ropeStart: 20, vision: v)
    XCTAssertEqual(cont.tokens, [150, 152, 150, 153])
    XCTAssertEqual(cont.rope, [20, 21, 22, 23, 20, 21, 22, 23, 20, 21, 22, 23])
    XCTAssertThrowsError(try ImagePromptLayout(ids: [150, 150], image: v.images[1], ropeStart: 0, vision: v)) {
      XCTAssertTrue("\($0)".hasPrefix("prompt: 2 image tokens (150) for one image"), "\($0)")
    }
  }

  /// Records every image-method call; logits pick token 40 + (calls so far) so every step is told apart.
  final class FakeImageEngine: ImageInferenceEngine {
    let planner: EnginePlanner
    let hidden: Int
    var runtimeDescription: String { "fake" }
    var prefills: [(embeds: [Float], start: Int, rope: [Int])] = []
    var embeds: [[Int]] = []
    var decodes: [(token: Int, slot: Int, rope: Int)] = []
    var textSteps = 0
    var encoded: [String] = []
    init(manifest: Manifest) throws {
      planner = try EnginePlanner(manifest: manifest)
      hidden = manifest.hiddenSize!
    }
    func logits() -> [Float] {
      var l = [Float](repeating: 0, count: planner.manifest.vocabSize)
      l[40 + prefills.count + decodes.count + textSteps] = 1
      return l
    }
    func execute(_ step: PlannedStep) throws -> [Float] {
      textSteps += 1
      return logits()
    }
    func encodeImage(_ rgb: [UInt8], size: ImageSizeSpec) throws -> [Float] {
      encoded.append(size.method)
      return (0..<size.tokens).flatMap { k in [Float](repeating: -Float(k + 1), count: hidden) }
    }
    func embed(_ ids: [Int]) throws -> [Float] {
      embeds.append(ids)
      return ids.flatMap { id in (0..<hidden).map { Float(id) + Float($0) / 1000 } }
    }
    func prefillEmbeddings(_ embeds: [Float], start: Int, rope: [Int]) throws -> [Float] {
      prefills.append((embeds, start, rope))
      return logits()
    }
    func decodeRope(_ token: Int, slot: Int, rope: Int) throws -> [Float] {
      decodes.append((token, slot, rope))
      return logits()
    }
  }

  func testSessionRunsTheContractSteps() throws {
    let manifest = try ImageTests.visionManifest()
    let engine = try FakeImageEngine(manifest: manifest)
    let session = GenerationSession(engine: engine)
    let image = try ImageRGB(width: 128, height: 64, rgb: [UInt8](repeating: 7, count: 64 * 128 * 3))
    var sampler = Sampler(.greedy)
    let r = try session.generate(ImageTests.handPrompt, maxNewTokens: 3, sampler: &sampler, stopIDs: [], image: image)
    XCTAssertEqual(engine.encoded, ["encode_image_64x128"])
    XCTAssertEqual(r.imageTokens, 8)
    XCTAssertNotNil(r.imageEncodeMs)
    // 13 tokens in chunks of at most 8 (the methods' max_tokens): embeds and prefills [0, 8) and [8, 13).
    XCTAssertEqual(engine.embeds.map(\.count), [8, 5])
    XCTAssertEqual(engine.prefills.map(\.start), [0, 8])
    let n = 13
    var rope = [[Int]](repeating: [], count: 3)
    for p in engine.prefills {
      let t = p.rope.count / 3
      for row in 0..<3 { rope[row] += p.rope[(row * t)..<((row + 1) * t)] }
    }
    XCTAssertEqual(rope, ImageTests.handRope)
    // Rows 3..<11 are the image's rows (-1 ... -8), the others the token embeddings.
    let embeds = engine.prefills.flatMap(\.embeds)
    XCTAssertEqual(embeds.count, n * 256)
    let layout = [9, 8, 152] + [Int](repeating: -1, count: 8) + [153, 7]
    for (row, id) in layout.enumerated() {
      let want: Float = id >= 0 ? Float(id) + 0.005 : -Float(row - 2)
      XCTAssertEqual(embeds[row * 256 + 5], want, accuracy: 1e-6, "row \(row)")
    }
    // Decode: slot 13 + k, rotary position 9 + k; the tokens are the fake's argmaxes.
    XCTAssertEqual(engine.decodes.map(\.slot), [13, 14])
    XCTAssertEqual(engine.decodes.map(\.rope), [9, 10])
    XCTAssertEqual(r.ids, [42, 43, 44])
    XCTAssertEqual(session.ropeDelta, -4)

    // A text turn after it: pending 44 then [5, 6] at slots 15.. and rotary positions 11.. (all rows equal).
    _ = try session.generate([5, 6], maxNewTokens: 1, sampler: &sampler, stopIDs: [])
    XCTAssertEqual(engine.prefills.last!.start, 15)
    XCTAssertEqual(engine.prefills.last!.rope, [11, 12, 13, 11, 12, 13, 11, 12, 13])
    XCTAssertEqual(engine.embeds.last!, [44, 5, 6])
    XCTAssertEqual(engine.textSteps, 0, "a session holding an image never runs the text methods")
    session.reset()
    XCTAssertEqual(session.ropeDelta, 0)
    _ = try session.generate([5, 6], maxNewTokens: 2, sampler: &sampler, stopIDs: [])
    XCTAssertGreaterThan(engine.textSteps, 0)
    XCTAssertEqual(engine.prefills.count, 3, "a text session runs forward/decode_token")
  }

  func testSessionRefusesImagesItCannotTake() throws {
    let session = GenerationSession(engine: try FakeImageEngine(manifest: try ImageTests.visionManifest()))
    let image = try ImageRGB(width: 64, height: 128, rgb: [UInt8](repeating: 0, count: 64 * 128 * 3))
    XCTAssertThrowsError(try session.prefill([152, 150, 153], image: image)) {
      XCTAssertTrue("\($0)".hasPrefix("image: 128x64 (HxW) pixels"), "\($0)")
    }
    XCTAssertThrowsError(
      try session.prefill([5, 6], image: try ImageRGB(width: 32, height: 32, rgb: [UInt8](repeating: 0, count: 3072)))
    ) {
      XCTAssertTrue("\($0)".hasPrefix("prompt: 0 image tokens (150)"), "\($0)")
    }
    XCTAssertEqual(session.position, 0)
  }
}
