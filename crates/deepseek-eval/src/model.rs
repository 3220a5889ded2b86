//! What a benchmark needs from a model, and the engine's implementation: requests go to the
//! continuous-batching scheduler, so a batch of questions shares forwards and the common
//! few-shot prefix comes from the latent cache.

use std::sync::Arc;

use deepseek_engine::scheduler::{Event, Request, SchedulerHandle};
use deepseek_engine::{SamplingParams, Tokenizer};

use crate::EvalError;

/// Score `continuations` after `context` (multiple choice).
#[derive(Clone, Debug)]
pub struct ChoiceRequest {
    pub context: String,
    pub continuations: Vec<String>,
}

/// Generate after `prompt` until a stop string or `max_tokens`.
#[derive(Clone, Debug)]
pub struct GenRequest {
    pub prompt: String,
    pub stop: Vec<String>,
    pub max_tokens: usize,
    /// 0: greedy.
    pub temperature: f32,
    pub seed: u64,
}

pub trait EvalModel {
    /// For each request, the log-likelihood of each continuation given its context.
    fn loglikelihoods(&mut self, reqs: &[ChoiceRequest]) -> Result<Vec<Vec<f64>>, EvalError>;
    /// For each request, the generated text (cut before the stop string).
    fn generate(&mut self, reqs: &[GenRequest]) -> Result<Vec<String>, EvalError>;
}

/// The engine, through its scheduler.
pub struct EngineModel {
    pub scheduler: SchedulerHandle,
    pub tokenizer: Arc<Tokenizer>,
}

fn wait(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event>) -> Result<Vec<Event>, EvalError> {
    let mut events = vec![];
    while let Some(e) = rx.blocking_recv() {
        let end = matches!(e, Event::Finished { .. });
        if let Event::Failed(m) = e {
            return Err(EvalError::Engine(m.to_string()));
        }
        events.push(e);
        if end {
            return Ok(events);
        }
    }
    Err(EvalError::Engine("the scheduler stopped".into()))
}

impl EngineModel {
    fn encode(&self, text: &str) -> Result<Vec<u32>, EvalError> {
        self.tokenizer
            .encode(text, true)
            .map_err(|e| EvalError::Engine(e.to_string()))
    }

    fn submit(&self, r: Request) -> Result<tokio::sync::mpsc::UnboundedReceiver<Event>, EvalError> {
        self.scheduler
            .submit(r)
            .map_err(|e| EvalError::Engine(e.to_string()))
    }
}

impl EvalModel for EngineModel {
    fn loglikelihoods(&mut self, reqs: &[ChoiceRequest]) -> Result<Vec<Vec<f64>>, EvalError> {
        // As lm-evaluation-harness: the continuation's tokens are those of context+continuation
        // after the context's own tokens.
        enum Plan {
            /// Every continuation is one token after the unchanged context: one request.
            Candidates(tokio::sync::mpsc::UnboundedReceiver<Event>),
            /// Otherwise one scoring request per continuation: (receiver, continuation start).
            Full(Vec<(tokio::sync::mpsc::UnboundedReceiver<Event>, usize)>),
        }
        let mut plans = vec![];
        for r in reqs {
            let ctx = self.encode(&r.context)?;
            let wholes: Vec<Vec<u32>> = r
                .continuations
                .iter()
                .map(|c| self.encode(&format!("{}{c}", r.context)))
                .collect::<Result<_, _>>()?;
            let single = wholes
                .iter()
                .all(|w| w.len() == ctx.len() + 1 && w[..ctx.len()] == ctx[..]);
            if single {
                let mut q = Request::new(ctx, 0);
                q.candidates = wholes.iter().map(|w| w[w.len() - 1]).collect();
                plans.push(Plan::Candidates(self.submit(q)?));
            } else {
                let mut v = vec![];
                for w in wholes {
                    let start = ctx.len().min(w.len() - 1).max(1);
                    let mut q = Request::new(w, 0);
                    q.prompt_logprobs = true;
                    v.push((self.submit(q)?, start));
                }
                plans.push(Plan::Full(v));
            }
        }
        let mut out = vec![];
        for p in plans {
            match p {
                Plan::Candidates(mut rx) => {
                    let lps = wait(&mut rx)?
                        .into_iter()
                        .find_map(|e| match e {
                            Event::CandidateLogprobs(v) => Some(v),
                            _ => None,
                        })
                        .ok_or_else(|| EvalError::Engine("no candidate logprobs".into()))?;
                    out.push(lps.into_iter().map(f64::from).collect());
                }
                Plan::Full(v) => {
                    let mut scores = vec![];
                    for (mut rx, start) in v {
                        // Prompt logprobs start at token 1: entry i is token i + 1's.
                        let lps: Vec<f32> = wait(&mut rx)?
                            .into_iter()
                            .flat_map(|e| match e {
                                Event::PromptLogprobs(l) => {
                                    l.into_iter().map(|t| t.logprob).collect()
                                }
                                _ => vec![],
                            })
                            .collect();
                        scores.push(lps[start - 1..].iter().map(|&x| x as f64).sum());
                    }
                    out.push(scores);
                }
            }
        }
        Ok(out)
    }

    fn generate(&mut self, reqs: &[GenRequest]) -> Result<Vec<String>, EvalError> {
        let mut rxs = vec![];
        for r in reqs {
            let mut q = Request::new(self.encode(&r.prompt)?, r.max_tokens);
            q.stop = r.stop.clone();
            q.sampling = SamplingParams {
                temperature: r.temperature,
                top_p: if r.temperature > 0.0 { 0.95 } else { 1.0 },
                seed: Some(r.seed),
                ..Default::default()
            };
            rxs.push(self.submit(q)?);
        }
        let mut out = vec![];
        for mut rx in rxs {
            let mut text = String::new();
            for e in wait(&mut rx)? {
                if let Event::Output { text: t, .. } = e {
                    text.push_str(&t);
                }
            }
            out.push(text);
        }
        Ok(out)
    }
}
