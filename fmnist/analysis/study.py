"""The published study's figures (restated with ours in docs/RESULTS.md), used as reference rows in reports."""

CLASS_F1_CNN = {
    "T-shirt/top": 0.881,
    "Trouser": 0.987,
    "Pullover": 0.909,
    "Dress": 0.930,
    "Coat": 0.884,
    "Sandal": 0.989,
    "Shirt": 0.812,
    "Sneaker": 0.970,
    "Bag": 0.986,
    "Ankle boot": 0.975,
}

# model config name -> the study's recipe epochs, test accuracy, macro F1, training seconds
STUDY = {
    "cnn": {
        "epochs": 150,
        "test_acc": 0.931875,
        "macro_f1": 0.932,
        "train_seconds": 49_809.8,
        "params_total_keras": 306_906,
        "class_f1": CLASS_F1_CNN,
    },
    "rnn": {
        "epochs": 25,
        "test_acc": 0.89,
        "macro_f1": 0.89,
        "train_seconds": 2_320.0,
        "params_total_keras": 135_498,
        "class_f1": {"Shirt": 0.69, "Coat": 0.82, "Pullover": 0.82},
    },
    "bilstm": {
        "epochs": 20,
        "test_acc": 0.90,
        "macro_f1": 0.90,
        "train_seconds": 77 * 60.0,
        "params_total_keras": 1_340_042,
        "class_f1": {"Shirt": 0.74},
    },
}
STUDY["bilstm_stated"] = STUDY["bilstm"]
