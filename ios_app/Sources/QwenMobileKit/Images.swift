import Foundation

/// One entry of the manifest's `vision.images`: a size the program's `encode_image_<H>x<W>` takes.
public struct ImageSizeSpec: Equatable, CustomStringConvertible {
  public let method: String
  public let height: Int
  public let width: Int
  public let gridTHW: [Int]  // patches: frames, rows, columns
  public let tokens: Int

  public init(method: String, height: Int, width: Int, gridTHW: [Int], tokens: Int) {
    self.method = method
    self.height = height
    self.width = width
    self.gridTHW = gridTHW
    self.tokens = tokens
  }

  /// "HxW", as the method names it.
  public var description: String { "\(height)x\(width)" }
}

/// The manifest's `vision` section (runtime/CONTRACT.md, "Images"): present only in bundles with image methods.
public struct VisionSpec: Equatable {
  /// The program's image-prompt methods (runtime/contract.py IMAGE_TEXT_METHODS).
  public static let embedMethod = "embed_tokens"
  public static let prefillMethod = "prefill_embeddings"
  public static let decodeMethod = "decode_token_rope"

  public let imageTokenID: Int
  public let visionStartTokenID: Int
  public let visionEndTokenID: Int
  public let spatialMergeSize: Int
  public let images: [ImageSizeSpec]

  init(_ node: JSONNode) throws {
    imageTokenID = try node["image_token_id"].int()
    visionStartTokenID = try node["vision_start_token_id"].int()
    visionEndTokenID = try node["vision_end_token_id"].int()
    spatialMergeSize = try node["spatial_merge_size"].int()
    for (key, name) in [
      ("embed", VisionSpec.embedMethod), ("prefill", VisionSpec.prefillMethod), ("decode", VisionSpec.decodeMethod),
    ] where try node["methods"][key].string() != name {
      throw node["methods"][key].fail("this app runs '\(name)'")
    }
    let merge = spatialMergeSize
    images = try node["images"].array().map { e in
      let size = ImageSizeSpec(
        method: try e["method"].string(), height: try e["height"].int(), width: try e["width"].int(),
        gridTHW: try e["grid_thw"].ints(), tokens: try e["tokens"].int())
      guard size.method == "encode_image_\(size.height)x\(size.width)" else {
        throw e["method"].fail("expected 'encode_image_\(size.height)x\(size.width)' for its height and width")
      }
      let g = size.gridTHW
      guard g.count == 3, g[0] == 1, g[1] % merge == 0, g[2] % merge == 0, g[1] > 0, g[2] > 0 else {
        throw e["grid_thw"].fail("a single frame whose rows and columns are multiples of spatial_merge_size \(merge)")
      }
      guard size.tokens == g[1] * g[2] / (merge * merge) else {
        throw e["tokens"].fail("\(size.tokens), but grid_thw gives \(g[1] * g[2] / (merge * merge))")
      }
      return size
    }
    guard !images.isEmpty else { throw node["images"].fail("empty") }
  }

  /// The entry of exactly height x width pixels.
  public func size(height: Int, width: Int) throws -> ImageSizeSpec {
    guard let s = images.first(where: { $0.height == height && $0.width == width }) else {
      throw BundleError(
        "image: \(height)x\(width) (HxW) pixels; this bundle encodes "
          + images.map(\.description).joined(separator: ", ") + " (HxW) only: scale it to chooseSize first")
    }
    return s
  }

  /// The size an image of height x width pixels is scaled to (the contract's one rule).
  public func chooseSize(height: Int, width: Int) throws -> ImageSizeSpec {
    try ImageSizeRule.choose(height: height, width: width, sizes: images)
  }
}

/// runtime/images.py choose_image_size: of the sizes closest in aspect ratio (|log(W/H) - log(w/h)|, within 1 %),
/// the largest that does not upscale the image (h*w at most its pixels), else the smallest of them.
public enum ImageSizeRule {
  static let sameAspect = 0.01

  public static func choose(height: Int, width: Int, sizes: [ImageSizeSpec]) throws -> ImageSizeSpec {
    guard !sizes.isEmpty else { throw BundleError("the bundle lists no image sizes") }
    guard height >= 1, width >= 1 else { throw BundleError("image of \(width)x\(height) pixels is empty") }
    func gap(_ s: ImageSizeSpec) -> Double {
      abs(log(Double(s.width) / Double(s.height)) - log(Double(width) / Double(height)))
    }
    let best = sizes.map(gap).min()!
    var fitting: ImageSizeSpec?
    var smallest: ImageSizeSpec?
    for s in sizes where gap(s) <= best + sameAspect {
      let area = s.height * s.width
      // Ties in area: the later entry fits (Python's stable sort, then [-1]); the earlier is the smallest.
      if area <= height * width, area >= (fitting.map { $0.height * $0.width } ?? 0) { fitting = s }
      if area < (smallest.map { $0.height * $0.width } ?? Int.max) { smallest = s }
    }
    return fitting ?? smallest!
  }
}

/// An image as the program takes it: RGB bytes, 3 per pixel, rows top to bottom, at one of the bundle's sizes.
public struct ImageRGB: Equatable {
  public let width: Int
  public let height: Int
  public let rgb: [UInt8]  // [height, width, 3]

  public init(width: Int, height: Int, rgb: [UInt8]) throws {
    guard width >= 1, height >= 1 else { throw BundleError("image of \(width)x\(height) pixels") }
    guard rgb.count == width * height * 3 else {
      throw BundleError("rgb: \(rgb.count) bytes; a \(height)x\(width) (HxW) RGB image has \(width * height * 3)")
    }
    self.width = width
    self.height = height
    self.rgb = rgb
  }

  /// RGBA bytes (what a CGContext draws into) -> RGB, transparency composited onto white as runtime/images.py
  /// decode_image does. `premultiplied`: the colour bytes are already scaled by alpha (CGImageAlphaInfo
  /// .premultipliedLast); otherwise straight alpha (.last).
  public init(rgba: [UInt8], width: Int, height: Int, premultiplied: Bool) throws {
    guard rgba.count == width * height * 4 else {
      throw BundleError("rgba: \(rgba.count) bytes for a \(height)x\(width) image (4 per pixel)")
    }
    var rgb = [UInt8](repeating: 0, count: width * height * 3)
    for i in 0..<(width * height) {
      let a = Int(rgba[4 * i + 3])
      for c in 0..<3 {
        let v = Int(rgba[4 * i + c])
        // Over white: premultiplied v + (255 - a); straight (v*a + 255*(255-a)) / 255, rounded to nearest.
        let out = a == 255 ? v : premultiplied ? min(255, v + 255 - a) : (v * a + 255 * (255 - a) + 127) / 255
        rgb[3 * i + c] = UInt8(out)
      }
    }
    try self.init(width: width, height: height, rgb: rgb)
  }
}

extension ImageRGB {
  /// runtime/images.py synthetic_image: a fixed test card (red and green ramps, a blue checkerboard of 8-pixel
  /// squares), so benchmarks time the same pixels on every device and the host without a file.
  public static func testCard(height: Int, width: Int) -> ImageRGB {
    var rgb = [UInt8](repeating: 0, count: height * width * 3)
    for r in 0..<height {
      for c in 0..<width {
        let i = 3 * (r * width + c)
        rgb[i] = UInt8(r * 255 / max(height - 1, 1))
        rgb[i + 1] = UInt8(c * 255 / max(width - 1, 1))
        rgb[i + 2] = UInt8(((r / 8 + c / 8) % 2) * 200 + 28)
      }
    }
    return try! ImageRGB(width: width, height: height, rgb: rgb)
  }

  /// RGBX bytes (a CGContext with CGImageAlphaInfo.noneSkipLast, drawn over white) -> RGB: every fourth byte dropped.
  public init(rgbx: [UInt8], width: Int, height: Int) throws {
    guard rgbx.count == width * height * 4 else {
      throw BundleError("rgbx: \(rgbx.count) bytes for a \(height)x\(width) image (4 per pixel)")
    }
    var rgb = [UInt8]()
    rgb.reserveCapacity(width * height * 3)
    for i in 0..<(width * height) { rgb += rgbx[(4 * i)..<(4 * i + 3)] }
    try self.init(width: width, height: height, rgb: rgb)
  }
}

/// A prompt with one image laid out for `prefill_embeddings` (runtime/CONTRACT.md, "Images", steps 1 and 3), as
/// qwen-bench's layout_image_prompt: the image token expanded, the rows the image's embeddings replace, and the
/// three-row rotary positions.
public struct ImagePromptLayout: Equatable {
  public var tokens: [Int]
  public var imageRange: Range<Int>  // empty without an image
  public var rope: [Int]  // [3, tokens.count] row-major: time, height, width
  public var nextRope: Int

  /// With `image`, `ids[firstSearched...]` (the caller's prompt; earlier ids, e.g. a pending token, are text) must
  /// hold exactly one image token; without, every id is text. Positions start at `ropeStart`.
  public init(ids: [Int], firstSearched: Int = 0, image: ImageSizeSpec?, ropeStart: Int, vision: VisionSpec) throws {
    var mark = ids.count
    if let image {
      let marks = ids.indices.filter { $0 >= firstSearched && ids[$0] == vision.imageTokenID }
      guard marks.count == 1 else {
        throw BundleError(
          "prompt: \(marks.count) image tokens (\(vision.imageTokenID)) for one image: mark its place with exactly "
            + "one, inside vision_start (\(vision.visionStartTokenID)) and vision_end (\(vision.visionEndTokenID)); "
            + "it is expanded to the image's \(image.tokens) tokens")
      }
      mark = marks[0]
    }
    var tokens: [Int] = []
    var t: [Int] = []
    var h: [Int] = []
    var w: [Int] = []
    var range = 0..<0
    var p = ropeStart
    for (i, id) in ids.enumerated() {
      guard i == mark, let image else {
        tokens.append(id)
        t.append(p)
        h.append(p)
        w.append(p)
        p += 1
        continue
      }
      // The k-th image token sits at row k / (gw/m), column k % (gw/m) of the merged grid: (p, p + row, p + column).
      let gh = image.gridTHW[1] / vision.spatialMergeSize
      let gw = image.gridTHW[2] / vision.spatialMergeSize
      let begin = tokens.count
      for k in 0..<(gh * gw) {
        tokens.append(vision.imageTokenID)
        t.append(p)
        h.append(p + k / gw)
        w.append(p + k % gw)
      }
      range = begin..<tokens.count
      p += max(gh, gw)
    }
    self.tokens = tokens
    imageRange = range
    rope = t + h + w
    nextRope = p
  }
}
