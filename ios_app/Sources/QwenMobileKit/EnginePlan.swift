import Foundation

/// One input of one engine call: its name, concrete shape and dtype as the manifest declares them, and what fills it.
public struct PlannedInput: Equatable {
  public enum Source: Equatable {
    case tokens  // the step's token ids
    case positions  // absolute positions of those tokens (input_pos)
    case hidden(fromPackage: String)  // the previous package's hidden_out (split Core ML models)
    case hostState(buffer: String)  // a host-side state buffer (Core ML "io" layout: gdn_conv, gdn_rec)
  }
  public let name: String
  public let shape: [Int]
  public let dtype: String
  public let source: Source
  /// Token ids or positions for .tokens / .positions; nil for tensors filled at run time.
  public let values: [Int]?
}

/// One call into a program: a `.pte` method, or one Core ML function of one package.
public struct PlannedCall: Equatable {
  public let package: String?  // Core ML package file; nil for a .pte
  public let method: String  // .pte method ("forward", "decode_token") or Core ML function ("prefill", "decode")
  public let inputs: [PlannedInput]
  public let outputs: [String]
}

/// One logical step: tokens in at `startPosition`, logits of the last one out; several calls when a model is split
/// over packages (run in order, first to last).
public struct PlannedStep: Equatable {
  public enum Kind: Equatable {
    case prefill
    case decode
  }
  public let kind: Kind
  public let tokens: [Int]
  public let startPosition: Int
  public let calls: [PlannedCall]
}

/// For a manifest and a token sequence, the exact calls the runtime makes (the same as the Python runtime:
/// runtime/program.py for a `.pte`, export/coreml/runner.py for Core ML; checked on the vectors that
/// tests/apps/make_engine_plans.py records from real bundles).
///
/// - `.pte` (xnnpack, coreml-pte): prefill in chunks of at most `forward.max_tokens` through `forward`
///   (tokens [1,T] and input_pos [T], dynamic T); each generated token through `decode_token` ([1,1], [1]).
/// - Core ML package: full `prefill_chunk`-token chunks through the `prefill` function, the rest of the prompt and
///   every generated token one at a time through `decode`; nothing is padded. A split model runs every step through
///   each package in order: the first takes tokens, the next ones the previous `hidden_out`, the last returns logits.
/// - A step at position 0 resets every state in-graph; the causal mask is built in-graph from input_pos, so no mask
///   tensor is ever passed.
public struct EnginePlanner {
  public let manifest: Manifest

  public init(manifest: Manifest) throws {
    self.manifest = manifest
    if manifest.isCoreMLPackage {
      guard manifest.forward.function != nil, manifest.decode.function != nil else {
        throw BundleError("\(manifest.source): coreml bundle without Core ML function names in program.methods")
      }
      guard manifest.maxPrefillTokens >= 2 else {
        throw BundleError("\(manifest.source): field 'program/methods/forward/max_tokens': a prefill chunk below 2")
      }
      if manifest.packages.count > 1 {
        for p in manifest.packages where p.io["prefill"] == nil || p.io["decode"] == nil {
          throw BundleError("\(manifest.source): field 'program/packages': package \(p.file) has no prefill/decode I/O")
        }
      }
    }
  }

  /// Steps that feed `tokens` starting at absolute position `start`.
  public func prefill(_ tokens: [Int], start: Int) throws -> [PlannedStep] {
    guard !tokens.isEmpty else { throw BundleError("prefill needs at least one token") }
    guard start >= 0, start + tokens.count <= manifest.maxSeqLen else {
      throw BundleError(
        "\(tokens.count) tokens at position \(start) do not fit the bundle's context of \(manifest.maxSeqLen)")
    }
    var steps: [PlannedStep] = []
    var pos = start
    var rest = tokens[...]
    if manifest.isCoreMLPackage {
      let chunk = manifest.maxPrefillTokens
      while rest.count >= chunk {
        steps.append(step(.prefill, Array(rest.prefix(chunk)), pos))
        rest = rest.dropFirst(chunk)
        pos += chunk
      }
      for token in rest {
        steps.append(step(.decode, [token], pos))
        pos += 1
      }
    } else {
      let chunk = manifest.maxPrefillTokens
      while !rest.isEmpty {
        let part = Array(rest.prefix(chunk))
        steps.append(step(.prefill, part, pos))
        rest = rest.dropFirst(part.count)
        pos += part.count
      }
    }
    return steps
  }

  /// The step that feeds one generated token at position `position`.
  public func decode(_ token: Int, position: Int) throws -> PlannedStep {
    guard position >= 0, position < manifest.maxSeqLen else {
      throw BundleError("position \(position) is outside the bundle's context of \(manifest.maxSeqLen)")
    }
    return step(.decode, [token], position)
  }

  func step(_ kind: PlannedStep.Kind, _ tokens: [Int], _ start: Int) -> PlannedStep {
    let method = kind == .prefill ? manifest.forward : manifest.decode
    if !manifest.isCoreMLPackage {
      return PlannedStep(
        kind: kind, tokens: tokens, startPosition: start,
        calls: [
          call(package: nil, name: method.key, inputs: method.inputs, outputs: method.outputs, tokens, start, nil)
        ])
    }
    let function = method.function!
    if manifest.packages.count <= 1 {
      let file = manifest.packages.first?.file ?? manifest.programFile
      return PlannedStep(
        kind: kind, tokens: tokens, startPosition: start,
        calls: [call(package: file, name: function, inputs: method.inputs, outputs: method.outputs, tokens, start, nil)]
      )
    }
    var calls: [PlannedCall] = []
    var previous: String? = nil
    for p in manifest.packages {
      let io = p.io[function]!
      calls.append(
        call(package: p.file, name: function, inputs: io.inputs, outputs: io.outputs, tokens, start, previous))
      previous = p.file
    }
    return PlannedStep(kind: kind, tokens: tokens, startPosition: start, calls: calls)
  }

  func call(
    package: String?, name: String, inputs: [TensorSpec], outputs: [TensorSpec], _ tokens: [Int],
    _ start: Int, _ previous: String?
  ) -> PlannedCall {
    let t = tokens.count
    let planned = inputs.map { spec -> PlannedInput in
      let shape = spec.concreteShape(tokens: t)
      switch spec.name {
      case "tokens":
        return PlannedInput(name: spec.name, shape: shape, dtype: spec.dtype, source: .tokens, values: tokens)
      case "input_pos":
        return PlannedInput(
          name: spec.name, shape: shape, dtype: spec.dtype, source: .positions,
          values: Array(start..<(start + t)))
      case "hidden":
        return PlannedInput(
          name: spec.name, shape: shape, dtype: spec.dtype,
          source: .hidden(fromPackage: previous ?? "?"), values: nil)
      default:
        // conv_in / rec_in carry the host-side delta-net state (buffers gdn_conv / gdn_rec).
        let buffer = spec.name == "conv_in" ? "gdn_conv" : spec.name == "rec_in" ? "gdn_rec" : spec.name
        return PlannedInput(
          name: spec.name, shape: shape, dtype: spec.dtype, source: .hostState(buffer: buffer),
          values: nil)
      }
    }
    return PlannedCall(package: package, method: name, inputs: planned, outputs: outputs.map(\.name))
  }

  /// Host-side state buffers of one package (Core ML "io" layout), zeroed at position 0.
  public func hostStateBuffers(package: String) -> [StateBuffer] {
    manifest.buffers.filter { $0.storage == "host_io" && ($0.package ?? manifest.programFile) == package }
  }

  /// Core ML states (MLState) of one package.
  public func coreMLStates(package: String) -> [StateBuffer] {
    manifest.buffers.filter { $0.storage == "coreml_state" && ($0.package ?? manifest.programFile) == package }
  }
}
