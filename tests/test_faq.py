"""The FAQ quotes the package's real messages (docs/faq_messages.py reads them from the source) and covers the main
ones."""

import sys

from doc_reading import ROOT, fenced_blocks

sys.path.insert(0, str(ROOT / "docs"))
import faq_messages  # noqa: E402

FAQ = ROOT / "docs" / "faq.md"
# messages a new user meets first: the FAQ must explain each (fragments of the package's messages)
FAQ_MUST_COVER = [
    # setting up, in each kind of loop
    "DivideConquerWrapper was not set up: in your own loop call dc.setup(",
    "must contain the wrapper's SubspaceMaskedEmbedder",
    "is the embedder itself",
    "must hold the {number of labels} samples of the ClusterSampler's labels",
    "which does not take the D&C step",
    "has trainable parameters that no optimizer holds",
    "freeze_trunk_epochs needs an optimizer that holds the trunk's parameters",
    "give the trunk a group of its own",
    "is in eval mode but gradients are being computed",
    "cannot read (inputs, labels) from a batch",
    # the sampler and the DataLoader
    "ClusterSampler takes batch_size and m as keywords",
    "is not a multiple of m=",
    "classes per batch",
    "must be integers, got dtype",
    "ClusterSampler yields sample indices, but the DataLoader got it as batch_sampler=",
    "the DataLoader's batch_size=",
    "cannot fill a batch of",
    "no cluster can fill a batch of",
    "they are left out of the batches until the next reclustering",
    # PML's trainers
    "the trainer's sampler is not the wrapper's ClusterSampler",
    "differs from ClusterSampler's batch_size",
    "freeze_these contains",
    # Lightning
    "the training DataLoader does not draw from the wrapper's ClusterSampler",
    "use_distributed_sampler=False",
    "DivideConquerCallback found",
    # during training
    "reached DivideConquerWrapper, but the end-of-epoch step after epoch",
    "DivideConquerWrapper's end-of-epoch step was last taken after epoch",
    "were never taken",
    "received a batch that its ClusterSampler did not draw",
    "dc.one_batch()",
    "the labels the loss received do not match the batch ClusterSampler drew",
    "got an indices_tuple and a miner in DivideConquerWrapper",
    # the schedule, the wrapper's arguments, reclustering
    "conquer_epoch is deprecated",
    "give the schedule either as schedule= or as",
    "is not a power of two",
    "it was built with embedding_size=",
    "k-means with K=",
    "does not use class labels",
    "is not a PML loss",
    # bad input, faults and resuming
    "the divide phase ends after epoch",
    "the run stops after epoch",
    "compares samples within a batch",
    "end_epoch() called twice for one epoch?",
    "no batch reached the loss since set-up: is the loop calling the wrapper?",
    "the reclustering failed on rank 0, which clusters for every rank",
    "another rank found a fault in its batches",
    "the training dataset {change} from",
    "the loss was called a second time for the batch it had just received",
    "the loop skipped {count} batch(es) without saying so",
    "dc.skip_batch() was called, but no batch the sampler drew is waiting",
    "the loss DivideConquerWrapper computed is NaN or inf while its embeddings are finite",
    "batches since the last end-of-epoch step had non-finite embeddings under float16 autocast",
    "training samples to cluster are NaN or inf",
    "a float16 batch overflowed (its embeddings are NaN or inf) and the loss keeps a",
    "the checkpoint holds {…} learners, this wrapper {…}",
    "is out of range for num_clusters=",
    "the checkpoint's D&C state lacks {missing}",
]


def faq_quotes():
    return [code for lang, attrs, code, _ in fenced_blocks(FAQ) if lang == "text"]


def test_faq_quotes_only_messages_the_package_gives():
    templates = faq_messages.templates()
    quotes = faq_quotes()
    assert len(quotes) >= 30
    stale = [q for q in quotes if not faq_messages.is_quoted_from(q, templates)]
    assert not stale, "quoted in docs/faq.md but not in the package:\n\n" + "\n\n".join(stale)


def test_faq_covers_the_main_messages():
    quoted = " ".join(faq_messages.normalise(q) for q in faq_quotes())
    missing = [m for m in FAQ_MUST_COVER if m not in quoted]
    assert not missing, missing
    text = FAQ.read_text()
    assert "optimizer got an empty parameter list" in text  # torch's error, with a parameter-free loss
    assert "Converting a tensor with requires_grad=True" in text  # torch's warning about PML's progress bar
    assert '\\"' not in text  # no escaped quotes in titles


def test_faq_generator_reads_the_messages_from_the_source():
    templates = faq_messages.templates()
    assert "sampler.py" in templates and "wrapper.py" in templates
    joined = [faq_messages.normalise(t) for ts in templates.values() for t in ts]
    assert any(t.startswith("batch_size={batch_size} is not a multiple of m={m}") for t in joined)
    assert faq_messages.is_quoted_from("…is not a multiple of m={m}: a batch holds", templates)
    assert not faq_messages.is_quoted_from("a message that the package does not give", templates)


# ---------------------------------------------------------------------------------------------- the site
