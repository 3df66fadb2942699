from spark_pipeline.specmap.lexical import (
    BM25,
    NameIndex,
    chunk_words,
    code_identifiers,
    datasheet_names,
    split_identifier,
    tokenize,
)


def test_datasheet_names_and_placeholders():
    text = "Write PWR_MGMT_1 then GPIOx_MODER of USART2. THE NOTE says CR1 holds UE."
    names = datasheet_names(text)
    assert "PWR_MGMT_1" in names and "GPIO_MODER" in names and "USART2" in names and "CR1" in names
    assert "THE" not in names and "NOTE" not in names


def test_identifiers_include_arrow_accesses():
    idents = code_identifiers("GPIOA->MODER |= 1; uart.regs->SR = 0; int x;")
    assert {"GPIOA_MODER", "GPIOA", "MODER", "REGS_SR"} <= idents
    assert "INT" not in idents


def test_name_index_finds_names_inside_longer_identifiers():
    index = NameIndex({"a.h": "#define SKM6_REG_PWR_MGMT_1 0x6B", "b.c": "int pwr;", "c.c": "USART1->CR1 = 0;"})
    assert index.files_for("PWR_MGMT_1") == {"a.h"}
    assert index.files_for("USART1_CR1") == {"c.c"}
    assert index.files_for("MGMT_2") == set()
    scores, matched = index.score_files(["PWR_MGMT_1", "CR1"])
    assert set(scores) == {"a.h", "c.c"} and matched["a.h"] == ["PWR_MGMT_1"]
    assert index.weight("PWR_MGMT_1") > index.weight("CR1")  # longer names weigh more


def test_split_and_tokenize():
    assert split_identifier("HAL_UART_Transmit") == ("hal", "uart", "transmit")
    assert split_identifier("readRegValue") == ("read", "reg", "value")
    tokens = tokenize("void uart_init(void) the register")
    assert "uart" in tokens and "uart_init" in tokens and "the" not in tokens and "void" not in tokens


def test_bm25_ranks_the_relevant_document_first():
    docs = {"uart": tokenize("uart baud rate transmit receive uart"), "gpio": tokenize("gpio pin mode output"),
            "misc": tokenize("misc helper functions")}
    scores = BM25(docs).scores(tokenize("set the uart baud rate"))
    assert max(scores, key=scores.get) == "uart" and "misc" not in scores


def test_adaptive_chunking():
    text = " ".join(f"w{i}" for i in range(1000))
    chunks = chunk_words(text, 300, overlap=20)
    assert len(chunks) == 4 and all(len(c.split()) <= 300 for c in chunks)
    assert chunks[1].split()[0] == "w280"  # windows overlap
    assert chunk_words("short text", 300) == ["short text"]
