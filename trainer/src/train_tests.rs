use super::*;
use crate::synthetic::{DriftKind, Synthetic};

fn split(rows: usize, seed: u64) -> Split {
    let data: Vec<_> = Synthetic { seed, drift: DriftKind::None, onset: 0, ramp: 0 }.stream().take(rows).collect();
    crate::synthetic::split(&data, 0)
}

fn holdout_auc(model: &Mlp, holdout: &Split) -> f64 {
    let scores: Vec<f64> = holdout
        .x
        .iter()
        .map(|x| f64::from(model.forward(&x.iter().map(|v| *v as f32).collect::<Vec<_>>())[0]))
        .collect();
    flywheel_shadow::roc_auc(&scores, &holdout.y)
}

/// The true probabilities' AUC on the holdout: the best any model can do.
fn best_auc(seed: u64, rows: usize, holdout: &Split) -> f64 {
    let truth: Vec<f64> = Synthetic { seed, drift: DriftKind::None, onset: 0, ramp: 0 }
        .stream()
        .take(rows)
        .map(|r| r.probability)
        .collect();
    flywheel_shadow::roc_auc(&truth, &holdout.y)
}

#[test]
fn learns_the_synthetic_label_function_and_exports_what_it_learnt() {
    let (train_rows, holdout) = (split(6000, 1), split(3000, 2));
    let config = TrainConfig { hidden: vec![16], epochs: 150, device: DeviceChoice::Cpu, ..TrainConfig::default() };
    let trained = train(&train_rows, &config).unwrap();
    let (auc, best) = (holdout_auc(&trained.model, &holdout), best_auc(2, 3000, &holdout));
    assert!(auc > best - 0.05, "holdout AUC {auc:.3}, true-probability AUC {best:.3}");
    assert!(trained.epochs_run <= 150 && trained.best_validation_loss.is_finite());
    assert_eq!(trained.device.name, "cpu");
    assert_eq!(trained.train_rows, 5400);
}

#[test]
fn mini_batches_and_class_weights_train_too_and_weights_raise_the_scores_of_positives() {
    let (train_rows, holdout) = (split(6000, 3), split(3000, 4));
    let base =
        TrainConfig { hidden: vec![], epochs: 40, batch_size: 512, device: DeviceChoice::Cpu, ..Default::default() };
    let plain = train(&train_rows, &base).unwrap();
    let weighted = train(&train_rows, &TrainConfig { positive_weight: 10.0, ..base.clone() }).unwrap();
    let best = best_auc(4, 3000, &holdout);
    for m in [&plain.model, &weighted.model] {
        let auc = holdout_auc(m, &holdout);
        assert!(auc > best - 0.05, "holdout AUC {auc:.3}, true-probability AUC {best:.3}");
    }
    let mean = |m: &Mlp| {
        holdout.x.iter().map(|x| f64::from(m.forward(&x.iter().map(|v| *v as f32).collect::<Vec<_>>())[0])).sum::<f64>()
            / holdout.x.len() as f64
    };
    // Unweighted scores stay calibrated (the positive rate is ~4%); weighting positives ×10
    // pushes every score up.
    let (p, w) = (mean(&plain.model), mean(&weighted.model));
    assert!((0.01..0.1).contains(&p), "unweighted mean score {p:.3}");
    assert!(w > 2.0 * p, "weighted mean score {w:.3} vs {p:.3}");
}

#[test]
fn bad_settings_are_refused_with_the_key_and_value() {
    let rows = split(100, 1);
    for (config, key) in [
        (TrainConfig { epochs: 0, ..Default::default() }, "epochs"),
        (TrainConfig { learning_rate: -1.0, ..Default::default() }, "learning_rate"),
        (TrainConfig { positive_weight: 0.0, ..Default::default() }, "positive_weight"),
        (TrainConfig { validation_fraction: 0.7, ..Default::default() }, "validation_fraction"),
        (TrainConfig { hidden: vec![8, 0], ..Default::default() }, "hidden"),
    ] {
        let e = train(&rows, &config).unwrap_err();
        assert!(e.contains(key), "{e}");
    }
    assert!(train(&split(5, 1), &TrainConfig::default()).unwrap_err().contains("training rows"));
}

#[test]
fn cuda_without_a_gpu_is_an_error_and_auto_falls_back_with_the_reason() {
    if pick_cuda_works() {
        return; // a GPU machine: nothing to fall back from
    }
    let e = crate::device::pick(DeviceChoice::Cuda).unwrap_err();
    assert!(e.starts_with("device = cuda, but"), "{e}");
    let auto = crate::device::pick(DeviceChoice::Auto).unwrap();
    assert_eq!(auto.name, "cpu");
    assert!(auto.note.unwrap().starts_with("training on CPU: "));
}

fn pick_cuda_works() -> bool {
    crate::device::pick(DeviceChoice::Cuda).is_ok()
}

#[test]
fn a_warm_start_begins_from_the_given_model() {
    let rows = split(3000, 5);
    let config = TrainConfig { hidden: vec![8], epochs: 60, device: DeviceChoice::Cpu, ..TrainConfig::default() };
    let champion = train(&rows, &config).unwrap().model;
    // With a vanishing learning rate, warm-started training hands back the champion itself.
    let frozen = TrainConfig { epochs: 1, learning_rate: 1e-12, ..config.clone() };
    let warmed = train_from(&split(2000, 6), &frozen, Some(&champion)).unwrap();
    assert_eq!(warmed.warm_start.as_deref(), Some("from the given model's weights"));
    for x in split(50, 7).x {
        let x: Vec<f32> = x.iter().map(|v| *v as f32).collect();
        let (a, b) = (champion.forward(&x)[0], warmed.model.forward(&x)[0]);
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
    // Another architecture starts fresh and says why; warm_start = false ignores the model.
    let wider =
        train_from(&rows, &TrainConfig { hidden: vec![4], epochs: 2, ..config.clone() }, Some(&champion)).unwrap();
    assert!(wider.warm_start.unwrap().starts_with("skipped: its layer widths are [12, 8, 1]"));
    let off = train_from(&rows, &TrainConfig { warm_start: false, epochs: 2, ..config }, Some(&champion)).unwrap();
    assert_eq!(off.warm_start, None);
}
