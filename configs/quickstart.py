"""Five-minute demonstration on the embedded 'shapes' data (no download, 2 CPU cores).

Trains a teacher, a vanilla student and a CAT-KD student, then compares accuracy and how well
each one's class activation maps find the object. `python main.py --config configs/quickstart.py`
"""

from catkd_jax import default_config as default


def get_config():
    config = default.get_config()
    config.pipeline = "quickstart"
    config.data.source = "shapes"  # generated in code: 5 classes of objects with known boxes
    config.data.synthetic_train_size = 2000
    config.data.synthetic_test_size = 500
    config.teacher.arch = "resnet14"  # trained first by the quickstart itself (teacher.config unused)
    config.student.arch = "resnet8"
    config.num_epochs = 10  # sized to the 5-minute budget on 2 CPU cores
    config.optim.lr = 0.05
    config.optim.decay_epochs = (7,)  # the recipe's late decay, scaled to 10 epochs
    config.batch_size = 64
    config.eval_batch_size = 100
    # CAT-KD as for different-width pairs in the paper: normalised 2x2 CAMs.
    config.cat_kd.beta = 50.0
    config.cat_kd.resolution = 2
    config.cat_kd.normalize = True
    config.checkpoint.every_epochs = 10
    return config
