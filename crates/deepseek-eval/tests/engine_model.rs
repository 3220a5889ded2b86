//! The engine's log-likelihoods (both ways: one request with candidate tokens, or one scoring
//! request per continuation) equal a direct forward pass of the model.

use deepseek_model::CacheDtype;
use std::path::Path;
use std::sync::Arc;

use deepseek_engine::sampler::log_softmax;
use deepseek_engine::scheduler::{self, SchedulerConfig};
use deepseek_engine::{Generator, Tokenizer};
use deepseek_eval::{ChoiceRequest, EngineModel, EvalModel};
use deepseek_model::{LogitsFor, Model, PrefillPath, SeqStep};

#[test]
fn loglikelihoods_match_a_direct_forward() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/deepseek-coder-nano");
    let tok = Arc::new(Tokenizer::from_dir(&dir).unwrap());
    let model = Arc::new(Model::load(&dir, &mut |_, _| {}).unwrap());
    let eos = Generator::new(model.clone(), Some(tok.clone())).eos_ids();
    let (handle, thread) = scheduler::spawn(
        model.clone(),
        Some(tok.clone()),
        eos,
        SchedulerConfig::default(),
    );
    let mut engine = EngineModel {
        scheduler: handle.clone(),
        tokenizer: tok.clone(),
    };
    let context = "import os\nimport sys\n\ndef main(argv):\n    return";
    let reqs = vec![
        // Single-token continuations (candidates path), then multi-token ones (scoring path).
        ChoiceRequest {
            context: context.into(),
            continuations: vec![" 0".into(), " None".into()],
        },
        ChoiceRequest {
            context: context.into(),
            continuations: vec![" os.path.join(argv)".into(), " sys.exit(main())".into()],
        },
    ];
    let got = engine.loglikelihoods(&reqs).unwrap();
    handle.shutdown();
    thread.join().unwrap();

    let direct = |cont: &str| -> f64 {
        let ctx = tok.encode(context, true).unwrap();
        let whole = tok.encode(&format!("{context}{cont}"), true).unwrap();
        let mut pool = model.new_cache_pool(whole.len(), CacheDtype::F32);
        let mut cache = Default::default();
        let logits = model
            .forward(
                &mut pool,
                &mut [SeqStep {
                    tokens: &whole,
                    cache: &mut cache,
                }],
                LogitsFor::AllTokens,
                PrefillPath::Auto,
                None,
            )
            .unwrap();
        let v = model.config.vocab_size;
        (ctx.len()..whole.len())
            .map(|t| log_softmax(&logits[(t - 1) * v..t * v])[whole[t] as usize] as f64)
            .sum()
    };
    for (r, g) in reqs.iter().zip(&got) {
        for (c, &x) in r.continuations.iter().zip(g) {
            let want = direct(c);
            assert!((x - want).abs() < 1e-3, "{c:?}: engine {x}, direct {want}");
        }
    }
    // Which continuation the model prefers depends on its training; that the values are real
    // log-probabilities and tell the candidates apart does not.
    assert!(
        got.iter().flatten().all(|&x| x.is_finite() && x < 0.0),
        "log-likelihoods must be finite and negative: {got:?}"
    );
    assert!(
        got.iter().all(|g| g[0] != g[1]),
        "candidates scored alike: {got:?}"
    );
}
