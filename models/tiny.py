"""A tiny random-weight Llama with a locally trained BPE tokenizer, for tests and benchmarks (no hub, seconds).

vLLM's CPU attention needs head_dim >= 32, so the model has 2 heads of 32.
The weights are seeded: the same directory content every time, so greedy
generation is deterministic across runs and machines.
"""

from __future__ import annotations

from pathlib import Path

from bulkinfer.tasks.spec import builtin_task_names, load_task

CORPUS = [
    "covid vaccine, coronavirus vaccine, covid jab, cheap flights, budget flights, low cost airfare",
    "query: synonyms: answer: plum drupe pear pome lemon hesperidium grape berry",
    "the quick brown fox jumps over the lazy dog 0123456789",
    "vacuna vaccin impfung flüge vuelos 中古車 кроссовки",
]


# A Zephyr-style chat template, so chat-format tasks can be tested on the tiny model.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tiny_llama(target: Path, max_position_embeddings: int = 512) -> Path:
    """Writes a tiny Llama model directory (config, safetensors, tokenizer) to ``target``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from tokenizers import decoders as tk_decoders
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    target.mkdir(parents=True, exist_ok=True)
    corpus = list(CORPUS)
    for name in builtin_task_names():
        task = load_task(name)
        corpus += [task.instruction] + [f"{ex.input} {ex.output}" for ex in task.examples]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tk_decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(corpus * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(target)

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(target, safe_serialization=True)
    return target


def build_tiny_lora(base: Path, target: Path, rank: int = 8, seed: int = 1) -> Path:
    """Writes a LoRA adapter (PEFT format) for a tiny model: random, non-zero, seeded weights.

    PEFT starts B at zero (the adapter changes nothing until trained); a test of
    "the adapter changes the answers" needs an adapter that does, so both A and B
    are random here, with a large enough scale to move a random model's greedy picks.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=4 * rank,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        init_lora_weights=False,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(target, safe_serialization=True)
    return target
