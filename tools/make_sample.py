"""Generate the bundled sample dataset in `data/sample` (the default `data.root`).

    python tools/make_sample.py            # rewrites data/sample from scratch

Writes 24 Persian dishes in the raw layout `prepare` reads: folders (at any depth) of JPEGs and
`*.json` files whose records are `{"title", "response", "image_path"}` (most with a `"question"` too),
with `image_path` relative to the JSON file's folder. Every image of a dish is paired with every passage of that dish. The
three JSON forms (one object per file, a list, JSON Lines) and the spellings real scrapes mix
(Arabic ي/ك, ZWNJ vs space, tatweel, stray spaces, a UTF-8 BOM, \\u-escaped text, one passage
repeated verbatim in two folders) all appear; nothing in the sample is invalid.

Questions (`QUESTIONS`) are hand-written, one or two per passage: what a diner would ask about a photo
of the dish that *that* passage answers (how it is cooked, what it is served with, where it comes
from), never naming the dish. A record carries one of its passage's questions, except the records of
each dish's last photo, which carry none (both shapes of record appear).

Images are the dish's food emoji rendered from Noto Color Emoji (Debian: `apt-get install
fonts-noto-color-emoji`) on a fixed scene: a pale plate on a plain cloth, with small random shift,
scale, rotation, brightness and cloth colour. A tiny random vision model only tells dishes apart
when the scene stays constant and the dish carries the signal (see DESIGN.md). The pipeline never
needs the font; only this generator does.

Deterministic: every random draw comes from a `random.Random` seeded with a fixed string, so two
runs with the same Pillow version write byte-identical files.
"""

import argparse
import json
import logging
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageFont

logger = logging.getLogger("make_sample")

REPO = Path(__file__).resolve().parents[1]
FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
FONT_SIZE = 109  # the only size at which Noto Color Emoji's bitmap strikes render
SEED = "faclip-sample-v1"
IMAGES_PER_DISH = 8

# The scene: constant except for small jitters (measured: larger ones hide the dish from tiny models).
SIZE = 128
CLOTH = (222, 205, 170)  # sand-coloured cloth; a light cloth kept tiny models twice as accurate as a dark one
PLATE = (243, 240, 232)
PLATE_RIM = (214, 209, 198)
PLATE_BOX = (6, 10, 122, 118)
EMOJI_PX = (85, 110)  # longest side of the dish
SHIFT_PX = 8
ROTATE_DEG = 15.0
BRIGHTNESS = 0.15
CLOTH_JITTER = 15
JPEG_QUALITY = 85

ZWNJ = "\u200c"


@dataclass(frozen=True)
class Dish:
    slug: str
    title: str
    emoji: str
    passages: tuple[str, ...]


# fmt: off
DISHES = [
    Dish("ghormeh_sabzi", "قورمه سبزی", "🥬", (
        "قورمه سبزی از مشهورترین خورش‌های ایرانی است که با سبزی سرخ‌شده (تره، جعفری، گشنیز و شنبلیله)، "
        "لوبیا قرمز، گوشت گوسفند یا گوساله و لیمو عمانی پخته می‌شود.",
        "قورمه سبزی را معمولاً با چلو سرو می‌کنند و کنارش ته‌دیگ، ترشی یا سبزی خوردن می‌گذارند؛ "
        "این خورش در بسیاری از خانه‌های ایرانی غذای ناهار روزهای جمعه و مهمانی‌هاست.",
        "راز خوش‌طعمی قورمه سبزی جاافتادن آن است: خورش باید چند ساعت روی حرارت ملایم بپزد "
        "تا سبزی و گوشت طعم یکدیگر را بگیرند و روغن روی خورش بیاید.",
    )),
    Dish("koobideh", "کباب کوبیده", "🍢", (
        "کباب کوبیده از گوشت چرخ‌کرده‌ی گوسفند یا مخلوط گوسفند و گوساله با پیاز رنده‌شده، نمک و فلفل "
        "درست می‌شود؛ گوشت را دور سیخ‌های پهن می‌کشند و روی آتش زغال کباب می‌کنند.",
        "چلوکباب کوبیده را با برنج زعفرانی، گوجه‌فرنگی کبابی، کره و سماق سرو می‌کنند و کنارش معمولاً دوغ می‌نوشند.",
        "کوبیده را با نان لواش یا سنگک هم می‌خورند؛ در کبابی‌ها سیخ داغ را روی نان می‌گذارند "
        "تا نان آب کباب را به خود بگیرد.",
    )),
    Dish("joojeh_kabab", "جوجه کباب", "🐔", (
        "جوجه کباب از تکه‌های مرغ درست می‌شود که چند ساعت در آب لیمو، پیاز رنده‌شده، زعفران و ماست "
        "خوابانده و سپس روی زغال کباب می‌شوند.",
        "جوجه کباب را با چلو، گوجه‌فرنگی کبابی و کره یا با نان لواش سرو می‌کنند و از پرطرفدارترین "
        "غذاهای گردش‌ها و پیک‌نیک‌های خانوادگی ایرانی است.",
    )),
    Dish("zereshk_polo", "زرشک پلو با مرغ", "🍗", (
        "زرشک پلو با مرغ غذای رایج مهمانی‌ها و مجالس ایرانی است: روی برنج دم‌کشیده زرشک تفت‌داده "
        "در کره و شکر، برنج زعفرانی و گاهی خلال پسته و بادام می‌ریزند.",
        "مرغ زرشک پلو را معمولاً با پیاز، زردچوبه و زعفران می‌پزند تا سس غلیظ و خوش‌رنگی پیدا کند "
        "و آن را کنار پلو سرو می‌کنند.",
        "بیشتر زرشک ایران در خراسان جنوبی، به‌ویژه قائنات و بیرجند، کشت می‌شود و همین زرشک "
        "به زرشک پلو طعم ترش و رنگ سرخ می‌دهد.",
    )),
    Dish("baghali_polo", "باقالی پلو", "🫘", (
        "باقالی پلو با برنج، باقالی و شوید تازه یا خشک دم می‌شود و رنگ سبز و عطر شوید "
        "آن را از دیگر پلوها جدا می‌کند.",
        "باقالی پلو را بیشتر با ماهیچه‌ی گوسفندی یا مرغ سرو می‌کنند و باقالی پلو با ماهیچه "
        "از غذاهای محبوب مهمانی‌ها و جشن‌های عروسی است.",
    )),
    Dish("adas_polo", "عدس پلو", "🍚", (
        "عدس پلو از برنج و عدس دم‌کشیده درست می‌شود و روی آن کشمش و خرمای تفت‌داده در کره می‌ریزند.",
        "عدس پلو را معمولاً با گوشت چرخ‌کرده‌ی سرخ‌شده با پیاز یا با گوشت قلقلی سرو می‌کنند "
        "و کنارش ماست یا سالاد می‌خورند.",
    )),
    Dish("shirin_polo", "شیرین پلو", "🍊", (
        "شیرین پلو با خلال پوست پرتقال، هویج، خلال بادام و پسته، زعفران و شکر درست می‌شود "
        "و معمولاً آن را با مرغ سرو می‌کنند.",
        "شیرین پلو از غذاهای مجلسی ایرانی است و در جشن‌های عروسی سرو می‌شود؛ "
        "شیرینی آن را نشانه‌ی آغاز زندگی شیرین عروس و داماد می‌دانند.",
    )),
    Dish("tahchin", "ته‌چین", "🥧", (
        "ته‌چین نوعی پلوی قالبی است که از برنج، ماست، زرده‌ی تخم‌مرغ و زعفران درست می‌شود "
        "و لای آن تکه‌های مرغ یا گوشت می‌گذارند.",
        "ته‌چین را آن‌قدر روی حرارت ملایم یا در فر می‌پزند که ته آن ترد و طلایی شود؛ سپس قالب را "
        "برمی‌گردانند و رویش را با زرشک و خلال بادام و پسته تزئین می‌کنند.",
    )),
    Dish("ash_reshteh", "آش رشته", "🍜", (
        "آش رشته آشی غلیظ از سبزی آش، نخود، لوبیا، عدس و رشته‌ی آش است که روی آن کشک، "
        "نعناع داغ، پیاز داغ و سیر داغ می‌ریزند.",
        "آش رشته را در شب چهارشنبه‌سوری و روزهای نوروز می‌پزند و نذری هم می‌دهند؛ "
        "در باور مردم، رشته نماد به دست گرفتن سررشته‌ی کارها در سال نو است.",
        "وقتی کسی به سفر می‌رود، چند روز پس از رفتنش آش رشته‌ای به نام آش پشت پا می‌پزند "
        "و میان همسایه‌ها پخش می‌کنند.",
    )),
    Dish("haleem", "حلیم", "🥣", (
        "حلیم از گندم پوست‌کنده و گوشت، معمولاً گوشت بوقلمون یا گوسفند، درست می‌شود "
        "و آن‌قدر می‌پزند و می‌کوبند تا کش بیاید.",
        "حلیم را صبح زود، به‌ویژه در روزهای سرد زمستان و سحرهای ماه رمضان، با کره، دارچین "
        "و شکر یا نمک می‌خورند.",
    )),
    Dish("fesenjan", "فسنجان", "🥘", (
        "خورش فسنجان با گردوی آسیاب‌شده و رب انار پخته می‌شود و معمولاً آن را با مرغ، اردک یا کوفته‌ریزه درست می‌کنند.",
        "فسنجان باید ساعت‌ها روی حرارت ملایم بپزد تا روغن گردو رویش بیاید و رنگش قهوه‌ای تیره شود؛ "
        "مزه‌ی آن بسته به سلیقه از ترش تا شیرین فرق می‌کند.",
        "فسنجان از غذاهای قدیمی شمال ایران، به‌ویژه گیلان، است و امروزه در سراسر ایران "
        "در مهمانی‌ها و شب یلدا با چلو سرو می‌شود.",
    )),
    Dish("gheymeh", "خورش قیمه", "🍟", (
        "خورش قیمه از گوشت خردشده، لپه، پیاز، رب گوجه‌فرنگی و لیمو عمانی پخته می‌شود "
        "و روی آن سیب‌زمینی خلالی سرخ‌شده می‌ریزند.",
        "قیمه را با چلو سرو می‌کنند و از رایج‌ترین نذری‌های ماه محرم است؛ گاهی به جای سیب‌زمینی "
        "بادمجان سرخ‌کرده رویش می‌گذارند که قیمه بادمجان نام دارد.",
    )),
    Dish("dizi", "دیزی (آبگوشت)", "🍲", (
        "دیزی یا آبگوشت با گوشت گوسفند، دنبه، نخود، لوبیا سفید، سیب‌زمینی، گوجه‌فرنگی و لیمو عمانی "
        "در ظرف سنگی کوچکی به نام دیزی پخته می‌شود.",
        "برای خوردن دیزی، اول نان سنگک را در آب آن ترید می‌کنند و بعد گوشت و حبوبات را با گوشت‌کوب "
        "می‌کوبند؛ کنارش سبزی خوردن، پیاز و ترشی می‌خورند.",
    )),
    Dish("kaleh_pacheh", "کله پاچه", "🍖", (
        "کله پاچه از سر و پاچه‌ی گوسفند درست می‌شود که ساعت‌ها با پیاز، سیر و ادویه می‌جوشد تا گوشتش نرم شود.",
        "کله پاچه را بیشتر صبح زود در کله‌پزی‌ها می‌خورند؛ زبان، بناگوش، مغز و چشم را جدا سرو می‌کنند "
        "و آب آن را با نان سنگک و آب نارنج می‌خورند.",
    )),
    Dish("mirza_ghasemi", "میرزا قاسمی", "🍳", (
        "میرزا قاسمی خوراکی گیلانی است از بادمجان کبابی، سیر، گوجه‌فرنگی و تخم‌مرغ "
        "که همه با هم در تابه تفت داده می‌شوند.",
        "میرزا قاسمی را معمولاً به‌عنوان پیش‌غذا یا غذای سبک با نان یا کته سرو می‌کنند؛ "
        "طعم دودی بادمجان کبابی مزه‌ی اصلی آن است.",
    )),
    Dish("kashk_bademjan", "کشک بادمجان", "🍆", (
        "کشک بادمجان از بادمجان سرخ‌کرده و له‌شده، پیاز داغ، سیر داغ و کشک درست می‌شود.",
        "روی کشک بادمجان را با نعناع داغ، پیاز داغ، کشک و گردوی خردشده تزئین می‌کنند و آن را "
        "با نان تازه، مثل سنگک یا بربری، به‌عنوان پیش‌غذا یا شام سبک می‌خورند.",
    )),
    Dish("sabzi_polo_mahi", "سبزی پلو با ماهی", "🐟", (
        "سبزی پلو با ماهی غذای سنتی نوروز است و بسیاری از خانواده‌های ایرانی آن را "
        "در شب عید یا ناهار روز اول سال می‌خورند.",
        "سبزی پلو با سبزی‌های معطری مثل جعفری، شوید، گشنیز و تره دم می‌شود و ماهی آن "
        "معمولاً ماهی سفید دریای خزر است که سرخ یا دودی می‌شود.",
        "ماهی دودی را که بیشتر در شمال ایران تهیه می‌شود پیش از سرو در بخار یا تابه گرم می‌کنند "
        "و کنار سبزی پلو با نارنج می‌خورند.",
    )),
    Dish("kuku_sabzi", "کوکو سبزی", "🥚", (
        "کوکو سبزی از سبزی‌های خردشده مثل جعفری، گشنیز، شوید و تره با تخم‌مرغ درست می‌شود "
        "و در تابه یا فر پخته می‌شود.",
        "در کوکو سبزی گاهی گردو و زرشک هم می‌ریزند و آن را گرم یا سرد با نان، ماست و سبزی خوردن "
        "می‌خورند؛ کوکو سبزی از غذاهای سفره‌ی نوروز است.",
    )),
    Dish("sholeh_zard", "شله زرد", "🍮", (
        "شله زرد دسری از برنج، شکر، زعفران و گلاب است که روی آن را با دارچین، خلال بادام و پسته تزئین می‌کنند.",
        "شله زرد از رایج‌ترین نذری‌های ایرانی است و در ماه محرم، به‌ویژه روزهای تاسوعا و عاشورا، "
        "و در ماه رمضان پخته و میان مردم پخش می‌شود.",
        "بسیاری روی شله زرد با پودر دارچین نقش‌هایی مثل گل و بوته یا نام‌های مذهبی می‌کشند.",
    )),
    Dish("biryani", "بریانی", "🫓", (
        "بریانی غذای مشهور اصفهان است که از گوشت و جگر سفید گوسفند درست می‌شود؛ گوشت پخته را چرخ می‌کنند "
        "و در کمچه‌ای مخصوص با دنبه و دارچین روی آتش می‌پزند.",
        "بریانی را روی نان تافتون گرم می‌کشند و با ریحان، پیاز، گردو و دوغ می‌خورند.",
    )),
    Dish("salad_shirazi", "سالاد شیرازی", "🥗", (
        "سالاد شیرازی از خیار، گوجه‌فرنگی و پیاز ریز خردشده با نعناع خشک و آب‌غوره یا آب لیمو درست می‌شود.",
        "سالاد شیرازی از شیراز آمده و امروز تقریباً کنار هر غذای ایرانی، به‌ویژه پلوها و کباب‌ها، سرو می‌شود.",
    )),
    Dish("faloodeh", "فالوده شیرازی", "🍨", (
        "فالوده شیرازی از رشته‌های بسیار نازک نشاسته در شربت نیمه‌یخ‌زده‌ی شکر و گلاب درست می‌شود "
        "و آن را با آب لیموی تازه یا شربت آلبالو می‌خورند.",
        "فالوده از قدیمی‌ترین دسرهای ایرانی است و شیراز به آن شهرت دارد؛ در تابستان‌های گرم "
        "آن را اغلب همراه بستنی سنتی زعفرانی سرو می‌کنند.",
    )),
    Dish("koofteh_tabrizi", "کوفته تبریزی", "🧆", (
        "کوفته تبریزی کوفته‌ای بسیار بزرگ از گوشت چرخ‌کرده، برنج، لپه و سبزی است که داخل آن "
        "تخم‌مرغ آب‌پز، آلو بخارا، گردو و زرشک می‌گذارند.",
        "کوفته تبریزی از غذاهای مشهور آذربایجان است؛ آن را در آبی از پیاز داغ و رب گوجه‌فرنگی "
        "می‌پزند و با نان و آب کوفته سرو می‌کنند.",
    )),
    Dish("dolmeh", "دلمه", "🫑", (
        "در دلمه فلفل دلمه‌ای، بادمجان، گوجه‌فرنگی یا برگ مو را با مخلوطی از برنج، گوشت چرخ‌کرده، "
        "لپه و سبزی معطر پر می‌کنند و می‌پزند.",
        "دلمه برگ مو را با چاشنی ترش و شیرین سرکه و شکر می‌پزند و در آذربایجان و بسیاری از شهرهای ایران "
        "طرفدار دارد.",
    )),
]
# fmt: on
DISH = {dish.slug: dish for dish in DISHES}

# Questions a diner would ask about a photo of the dish, one tuple per passage (in the dish's passage
# order), each pointing at *that* passage and never naming the dish: the photo says which dish.
# Written by hand, once, for the data; never tuned to a model.
# fmt: off
QUESTIONS = {
    "ghormeh_sabzi": (
        ("این خورش با چه سبزی‌ها و حبوباتی پخته می‌شود؟", "مواد اصلی این خورش چیست؟"),
        ("این خورش را با چه چیزی سرو می‌کنند؟", "این غذا بیشتر در چه وعده‌ای خورده می‌شود؟"),
        ("راز خوش‌طعم شدن این خورش چیست؟", "چقدر باید این خورش روی حرارت بماند؟"),
    ),
    "koobideh": (
        ("گوشت این کباب چطور آماده و روی سیخ کشیده می‌شود؟",),
        ("این کباب را با برنج و چه چیزهای دیگری سرو می‌کنند؟", "کنار این غذا چه نوشیدنی‌ای می‌نوشند؟"),
        ("این کباب را با کدام نان می‌خورند؟",),
    ),
    "joojeh_kabab": (
        ("مرغ این کباب را در چه چیزی می‌خوابانند؟", "این کباب از چه گوشتی درست می‌شود؟"),
        ("این کباب بیشتر در چه موقعیت‌هایی خورده می‌شود؟",),
    ),
    "zereshk_polo": (
        ("روی برنج این پلو چه می‌ریزند؟", "این پلو در چه مجالسی سرو می‌شود؟"),
        ("مرغ کنار این پلو چطور پخته می‌شود؟",),
        ("دانه‌های سرخ روی این پلو در کدام استان کشت می‌شوند؟", "رنگ سرخ و طعم ترش این غذا از کجا می‌آید؟"),
    ),
    "baghali_polo": (
        ("رنگ سبز و عطر این پلو از چیست؟", "این پلو با چه موادی دم می‌شود؟"),
        ("این پلو را با چه گوشتی سرو می‌کنند؟",),
    ),
    "adas_polo": (
        ("روی این پلو چه چیزهایی می‌ریزند؟", "این پلو از چه موادی درست می‌شود؟"),
        ("این پلو را با چه گوشتی و چه مخلفاتی می‌خورند؟",),
    ),
    "shirin_polo": (
        ("در این پلو چه موادی ریخته می‌شود؟",),
        ("چرا این پلو را در جشن‌های عروسی سرو می‌کنند؟",),
    ),
    "tahchin": (
        ("برنج این غذا را با چه چیزهایی مخلوط می‌کنند؟",),
        ("چطور ته این غذا ترد و طلایی می‌شود؟", "روی این غذا را با چه تزئین می‌کنند؟"),
    ),
    "ash_reshteh": (
        ("در این آش چه موادی هست و رویش چه می‌ریزند؟",),
        ("این آش را در چه مناسبت‌هایی می‌پزند؟", "این غذا در سال نو چه معنایی دارد؟"),
        ("وقتی کسی به سفر می‌رود چرا این آش را می‌پزند؟",),
    ),
    "haleem": (
        ("این غذا از چه موادی درست می‌شود؟", "چرا این غذا کش می‌آید؟"),
        ("این غذا را چه وقت و با چه چیزی می‌خورند؟",),
    ),
    "fesenjan": (
        ("این خورش با چه موادی پخته می‌شود؟", "این خورش را با چه گوشتی درست می‌کنند؟"),
        ("چرا رنگ این خورش قهوه‌ای تیره است؟", "مزه‌ی این خورش ترش است یا شیرین؟"),
        ("این خورش اصالتاً مال کجای ایران است؟",),
    ),
    "gheymeh": (
        ("روی این خورش چه می‌ریزند و خود خورش از چه پخته می‌شود؟",),
        ("این خورش در چه ماهی نذری داده می‌شود؟", "به جای سیب‌زمینی چه چیز دیگری رویش می‌گذارند؟"),
    ),
    "dizi": (
        ("این غذا در چه ظرفی و با چه موادی پخته می‌شود؟",),
        ("این غذا را چطور باید خورد؟", "گوشت و حبوبات این غذا را با چه می‌کوبند؟"),
    ),
    "kaleh_pacheh": (
        ("این غذا از کدام قسمت‌های گوسفند درست می‌شود؟",),
        ("این غذا را کجا و چه ساعتی می‌خورند؟", "چه قسمت‌هایی از آن را جدا سرو می‌کنند؟"),
    ),
    "mirza_ghasemi": (
        ("این خوراک از چه موادی درست می‌شود؟", "این غذا مال کدام استان است؟"),
        ("این غذا را به‌عنوان چه وعده‌ای و با چه چیزی سرو می‌کنند؟", "طعم دودی این غذا از کجاست؟"),
    ),
    "kashk_bademjan": (
        ("مواد اصلی این غذا چیست؟",),
        ("روی این غذا را با چه تزئین می‌کنند؟", "این غذا را با کدام نان می‌خورند؟"),
    ),
    "sabzi_polo_mahi": (
        ("این غذا را در چه روزی از سال می‌خورند؟",),
        ("ماهی این غذا معمولاً چه ماهی‌ای است؟", "برنج این غذا با چه سبزی‌هایی دم می‌شود؟"),
        ("ماهی دودی را پیش از سرو چطور گرم می‌کنند؟",),
    ),
    "kuku_sabzi": (
        ("این غذا از چه موادی و چطور پخته می‌شود؟",),
        ("داخل این غذا گاهی چه چیزهایی می‌ریزند؟", "این غذا را با چه می‌خورند؟"),
    ),
    "sholeh_zard": (
        ("این دسر از چه درست می‌شود؟",),
        ("این دسر را در چه روزهایی نذری می‌دهند؟",),
        ("روی این دسر با دارچین چه نقش‌هایی می‌کشند؟",),
    ),
    "biryani": (
        ("این غذا مال کدام شهر است و از چه گوشتی درست می‌شود؟",),
        ("این غذا را روی چه نانی و با چه مخلفاتی می‌خورند؟",),
    ),
    "salad_shirazi": (
        ("این سالاد از چه موادی درست می‌شود؟", "چاشنی این سالاد چیست؟"),
        ("این سالاد از کدام شهر آمده است؟", "این سالاد را کنار چه غذاهایی سرو می‌کنند؟"),
    ),
    "faloodeh": (
        ("این دسر از چه ساخته می‌شود و با چه می‌خورند؟",),
        ("این دسر را در تابستان همراه چه سرو می‌کنند؟", "کدام شهر به این دسر شهرت دارد؟"),
    ),
    "koofteh_tabrizi": (
        ("داخل این گلوله‌ی بزرگ گوشت چه می‌گذارند؟",),
        ("این غذا در چه آبی پخته و با چه سرو می‌شود؟", "این غذا از غذاهای کدام منطقه است؟"),
    ),
    "dolmeh": (
        ("داخل این غذا را با چه موادی پر می‌کنند؟",),
        ("چاشنی ترش و شیرین این غذا از چیست؟",),
    ),
}
# fmt: on
UNASKED_IMAGE = IMAGES_PER_DISH  # the records of each dish's last photo carry no question: both shapes appear


def check_questions() -> None:
    """One tuple of questions per passage, and no question names its dish (the photo has to say which)."""
    for dish in DISHES:
        questions = QUESTIONS[dish.slug]
        assert len(questions) == len(dish.passages), f"{dish.slug}: one tuple of questions per passage"
        for question in (q for per_passage in questions for q in per_passage):
            assert dish.title.replace(ZWNJ, " ") not in question.replace(ZWNJ, " "), f"{question!r} names {dish.title}"


# Spellings that real scrapes mix; each keeps the text the same after faclip's normalisation.
def arabic(text: str) -> str:
    """Persian ی/ک written with the Arabic letters ي/ك."""
    return text.replace("ی", "ي").replace("ک", "ك")


def spaces(text: str) -> str:
    """Every ZWNJ (half-space) typed as a plain space."""
    return text.replace(ZWNJ, " ")


def clean(text: str) -> str:
    return text


@dataclass(frozen=True)
class Group:
    """Records of one dish in one place: every listed image paired with every passage."""

    slug: str
    json_path: str  # relative to the sample root; for form "object", the folder of per-record files
    form: str  # "list" (a JSON list), "jsonl" (JSON Lines in a .json file) or "object" (one file per record)
    images: tuple[int, ...]  # 1-based image numbers of this dish
    image_dir: str = ""  # where the images live, relative to the JSON file's folder
    title: str | None = None  # the title as spelled in this place (default: the dish's own)
    spell: tuple = (clean,)  # one spelling per passage (the last one repeats)


ALL = tuple(range(1, IMAGES_PER_DISH + 1))
# One file may hold several groups (several dishes); its form must then agree.
LAYOUT = [
    # The same dish in two folders: "قورمه‌سبزی" (ZWNJ) here, "قورمه سبزي" (Arabic yeh) there.
    # Passage 1 is repeated verbatim in both places; passage 2 and 3 come back respelled.
    Group("ghormeh_sabzi", "khoresh/ghormeh_sabzi/ghormeh_sabzi.json", "list", (1, 2, 3, 4), "photos",
          title="قورمه‌سبزی"),
    Group("ghormeh_sabzi", "scrape_2023/ghormeh/records.json", "jsonl", (5, 6, 7, 8),
          title="قورمه سبزي", spell=(clean, lambda t: spaces(arabic(t)), arabic)),
    Group("fesenjan", "khoresh/khoresh.json", "list", ALL, "fesenjan", title="فسنجـان"),  # tatweel
    Group("gheymeh", "khoresh/khoresh.json", "list", ALL, "gheymeh"),
    Group("koobideh", "kebabs/tehran/koobideh", "object", ALL),
    Group("joojeh_kabab", "kebabs/mashhad/joojeh/joojeh.json", "jsonl", ALL, "images",
          title="جوجه‌کباب", spell=(spaces,)),
    Group("zereshk_polo", "polo/polo.json", "list", ALL, "images/zereshk_polo"),
    Group("baghali_polo", "polo/polo.json", "list", ALL, "images/baghali_polo", title="باقالي پلو"),
    Group("adas_polo", "polo/polo.json", "list", ALL, "images/adas_polo", spell=(spaces,)),
    Group("shirin_polo", "polo/polo.json", "list", ALL, "images/shirin_polo", title="شیرین‌پلو"),
    Group("tahchin", "scrape_2023/site_b/page_07/tahchin.json", "jsonl", ALL, "img",
          title="ته چين", spell=(arabic,)),
    Group("ash_reshteh", "ash/ash.json", "jsonl", ALL, "ash_reshteh"),
    Group("haleem", "ash/ash.json", "jsonl", ALL, "haleem", title="  حلیم "),
    Group("dizi", "tehran/dizi/dizi.json", "list", ALL),
    Group("kaleh_pacheh", "tehran/kalleh_pazi", "object", ALL, title="کله‌پاچه"),
    Group("mirza_ghasemi", "gilan/mirza_ghasemi/records.json", "jsonl", ALL, title="ميرزا قاسمي",
          spell=(spaces, clean)),
    Group("kashk_bademjan", "appetizers/kashk_bademjan/kashk_bademjan.json", "list", ALL, "pics",
          title="كشك بادمجان", spell=(arabic,)),
    Group("sabzi_polo_mahi", "nowruz/sabzi_polo_mahi.json", "list", ALL, "sabzi_polo_mahi"),
    Group("kuku_sabzi", "nowruz/kuku/kuku_sabzi.json", "jsonl", ALL),
    Group("sholeh_zard", "nazri/sholeh_zard/sholeh_zard.json", "list", ALL, title="شله‌زرد"),
    Group("biryani", "isfahan/biryani/biryani.json", "jsonl", ALL),
    Group("salad_shirazi", "shiraz/shiraz.json", "list", ALL, "salad"),
    Group("faloodeh", "shiraz/shiraz.json", "list", ALL, "faloodeh", spell=(arabic, clean)),
    Group("koofteh_tabrizi", "tabriz/koofteh/koofteh.json", "list", ALL),
    Group("dolmeh", "tabriz/dolmeh/records.json", "jsonl", ALL, "images"),
]
# How a few files are written (the rest: indented lists, plain UTF-8 JSON Lines).
WITH_BOM = {"nowruz/sabzi_polo_mahi.json"}  # a UTF-8 byte-order mark, as Windows tools write
ASCII_ESCAPED = {"ash/ash.json"}  # \uXXXX escapes instead of raw UTF-8, as some scrapers write
COMPACT = {"shiraz/shiraz.json"}  # a list on one line


def load_font(path: Path) -> ImageFont.FreeTypeFont:
    """Noto Color Emoji at its bitmap size, or a clear message on how to install it."""
    if not path.is_file():
        raise SystemExit(f"emoji font not found at {path}; install it with "
                         "`sudo apt-get install fonts-noto-color-emoji` or pass --font PATH")
    return ImageFont.truetype(str(path), FONT_SIZE)


def render_glyph(font: ImageFont.FreeTypeFont, emoji: str) -> Image.Image:
    """The emoji in colour, RGBA, cropped to its visible pixels."""
    canvas = Image.new("RGBA", (FONT_SIZE * 2, FONT_SIZE * 2), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((8, 8), emoji, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None or canvas.crop(box).convert("HSV").getextrema()[1][1] < 64:  # grey: not a colour glyph
        raise SystemExit(f"the font did not render {emoji!r} in colour; is it Noto Color Emoji?")
    return canvas.crop(box)


def render_image(glyph: Image.Image, rng: random.Random) -> Image.Image:
    """One photo of the dish: the fixed scene, with the dish's size, place, angle and light jittered."""
    cloth = tuple(c + rng.randint(-CLOTH_JITTER, CLOTH_JITTER) for c in CLOTH)
    image = Image.new("RGB", (SIZE, SIZE), cloth)
    ImageDraw.Draw(image).ellipse(PLATE_BOX, fill=PLATE, outline=PLATE_RIM, width=3)

    scale = rng.randint(*EMOJI_PX) / max(glyph.size)
    dish = glyph.resize((round(glyph.width * scale), round(glyph.height * scale)), Image.Resampling.LANCZOS)
    dish = dish.rotate(rng.uniform(-ROTATE_DEG, ROTATE_DEG), Image.Resampling.BICUBIC, expand=True)
    x = (SIZE - dish.width) // 2 + rng.randint(-SHIFT_PX, SHIFT_PX)
    y = (SIZE - dish.height) // 2 + rng.randint(-SHIFT_PX, SHIFT_PX)
    image.paste(dish, (x, y), dish)
    return ImageEnhance.Brightness(image).enhance(1 + rng.uniform(-BRIGHTNESS, BRIGHTNESS))


def image_name(slug: str, number: int) -> str:
    return f"{slug}_{number:02d}.jpg"


def build_records(group: Group) -> list[dict]:
    """The group's records, image by image, each image paired with every passage of its dish; every record
    but those of the dish's last photo carries a question about that passage."""
    dish = DISH[group.slug]
    title = dish.title if group.title is None else group.title
    records = []
    for number in group.images:
        image_path = "/".join(p for p in (group.image_dir, image_name(dish.slug, number)) if p)
        for i, passage in enumerate(dish.passages):
            spell = group.spell[min(i, len(group.spell) - 1)]
            record = {"title": title, "response": spell(passage), "image_path": image_path}
            if number != UNASKED_IMAGE:  # the photos take turns over the passage's questions
                questions = QUESTIONS[dish.slug][i]
                record["question"] = spell(questions[(number - 1) % len(questions)])
            records.append(record)
    return records


def dump(records: list[dict], form: str, rel: str) -> bytes:
    """Serialise one file's records in its form (deterministic: fixed key order, no timestamps)."""
    ascii_only = rel in ASCII_ESCAPED
    if form == "jsonl":
        text = "".join(json.dumps(r, ensure_ascii=ascii_only) + "\n" for r in records)
    elif form == "object":
        text = json.dumps(records[0], ensure_ascii=ascii_only, indent=2) + "\n"
    else:
        indent = None if rel in COMPACT else 2
        text = json.dumps(records, ensure_ascii=ascii_only, indent=indent) + "\n"
    return ("\ufeff" if rel in WITH_BOM else "").encode("utf-8") + text.encode("utf-8")


def write_sample(out: Path, font: ImageFont.FreeTypeFont, seed: str) -> dict:
    """Write images and JSON files under `out`; return counts for the README."""
    files: dict[str, tuple[str, list[dict]]] = {}  # JSON path -> (form, records)
    n_images = 0
    for group in LAYOUT:
        dish = DISH[group.slug]
        glyph = render_glyph(font, dish.emoji)
        json_dir = out / group.json_path if group.form == "object" else (out / group.json_path).parent
        for number in group.images:
            path = json_dir / group.image_dir / image_name(dish.slug, number)
            path.parent.mkdir(parents=True, exist_ok=True)
            rng = random.Random(f"{seed}/{dish.slug}/{number}")
            render_image(glyph, rng).save(path, "JPEG", quality=JPEG_QUALITY, optimize=True)
            n_images += 1

        records = build_records(group)
        if group.form == "object":
            per_passage = len(dish.passages)
            for k, record in enumerate(records):
                number, p = group.images[k // per_passage], k % per_passage + 1
                files[f"{group.json_path}/{dish.slug}_{number:02d}_{p}.json"] = ("object", [record])
        else:
            form, existing = files.setdefault(group.json_path, (group.form, []))
            assert form == group.form, f"{group.json_path}: mixed forms"
            existing.extend(records)

    for rel, (form, records) in sorted(files.items()):
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(dump(records, form, rel))

    forms = {form: sum(1 for f, _ in files.values() if f == form) for form in ("object", "list", "jsonl")}
    return {
        "dishes": len(DISHES),
        "images": n_images,
        "records": sum(len(r) for _, r in files.values()),
        "questions": sum(len(per_passage) for d in DISHES for per_passage in QUESTIONS[d.slug]),
        "records_with_question": sum("question" in r for _, rs in files.values() for r in rs),
        "passages": sum(len(d.passages) for d in DISHES),
        "json_files": len(files),
        "forms": forms,
    }


README = """\
# The bundled sample dataset

Generated by `python tools/make_sample.py` (see `tools/README.md`); do not edit by hand.
It is the default `data.root` so that `dvc repro` runs end to end with no data of your own.

- {dishes} Persian dishes, {images_per_dish} images each ({images} JPEGs, 128x128), {passages} passages
  (2-3 per dish, in Persian, each saying something true about the dish).
- {records} records in {json_files} JSON files: every image of a dish is paired with every passage of that dish.
- {questions} hand-written questions (1-2 per passage, never naming the dish: the photo says which);
  {records_with_question} records carry one (`"question"`), those of each dish's last photo none.
- All three JSON forms: {object} single-object files (`kebabs/tehran/koobideh/`, `tehran/kalleh_pazi/`),
  {list} list files, {jsonl} JSON Lines files (`.json` with one object per line).
- Folders at several depths; images beside their JSON file or in subfolders (`image_path` is relative
  to the JSON file's folder, never leaves it).
- Deliberate dirt, all of it valid: titles and passages with Arabic ي/ك, ZWNJ typed as a space and a
  space typed as ZWNJ, a tatweel (`فسنجـان`), stray spaces around a title, a UTF-8 BOM
  (`nowruz/sabzi_polo_mahi.json`), `\\uXXXX`-escaped text (`ash/ash.json`), a one-line list
  (`shiraz/shiraz.json`). Ghormeh sabzi lives in two folders under two spellings
  (`قورمه‌سبزی`, `قورمه سبزي`): after normalisation it is one dish, one passage appears verbatim in
  both places and the other two reappear respelled, so they dedupe.
- What `prepare` should find: {records} pairs, {images} images, {passages} unique passages, {dishes} dishes,
  nothing skipped.
- Images: the dish's food emoji (Noto Color Emoji, SIL Open Font License 1.1) on a pale plate on a
  plain cloth; size, position, rotation, brightness and cloth colour vary a little per image.
"""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "data" / "sample", help="sample folder (replaced)")
    parser.add_argument("--font", type=Path, default=FONT, help="NotoColorEmoji.ttf")
    parser.add_argument("--seed", default=SEED, help="seed string for every random draw")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    check_questions()
    font = load_font(args.font)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:  # build beside the old sample, then swap, so a failed run leaves the old one whole
        counts = write_sample(tmp, font, args.seed)
        (tmp / "README.md").write_text(
            README.format(images_per_dish=IMAGES_PER_DISH, **counts, **counts["forms"]), encoding="utf-8")
        shutil.rmtree(args.out, ignore_errors=True)
        tmp.rename(args.out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    logger.info("wrote %s: %d dishes, %d images, %d records in %d JSON files, %.0f KiB",
                args.out, counts["dishes"], counts["images"], counts["records"], counts["json_files"], size / 1024)


if __name__ == "__main__":
    main()
