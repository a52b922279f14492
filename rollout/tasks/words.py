"""A small embedded list of common English words for the cryptogram generator.

Hand-written (no download, no package data to ship): frequent, unambiguous lower-case words of
3-8 letters a-z, no proper nouns. r1_vlm used a "popular English words" data set from a hub that
cannot be reached here; any list of common words serves the task.
"""

from __future__ import annotations

_TEXT = """
able about above across act add after again age ago agree air all almost alone along already also
always among and animal answer any appear apple area arm army around art ask away baby back bad
bag ball bank base basket bear beat beauty bed bee before begin behind bell below best better
between big bird black blood blue board boat body bone book born both bottom box boy branch bread
break bright bring broad brother brown build burn busy but buy cake call came camp can capital
captain car card care carry case cat catch cause cell center chair chance change charge chart
check chief child choose church circle city class clean clear climb clock close cloud coast coat
cold color come common company contain cook cool copy corn corner cost cotton could count country
course cover cow crop cross crowd cry cup current cut dance dark day dead deal dear death decide
deep degree desert design did die differ dinner direct doctor does dog dollar done door double
down draw dream dress drink drive drop dry duck during each ear early earth ease east eat edge egg
eight either else end enemy energy enough enter equal even evening event ever every exact example
except eye face fact fair fall family famous far farm fast fat father fear feel feet fell few field
fight figure fill final find fine finger finish fire first fish fit five flat floor flow flower fly
follow food foot for force forest form forward found four free fresh friend from front fruit full
fun game garden gas gather gave general gentle get gift girl give glad glass gold gone good got
govern grand grass gray great green ground group grow guess guide gun hair half hall hand happen
happy hard has hat have head hear heart heat heavy held help her here high hill him his history
hold hole home hope horse hot hour house how huge human hundred hunt hurry ice idea inch include
industry insect instant iron island job join joy judge jump just keep kept key kill kind king
kitchen knew know lady lake land language large last late laugh law lay lead learn least leave led
left leg length less let letter level lie life lift light like line lion list listen little live
long look lost lot loud love low machine made main major make man many map mark market mass master
match matter may mean measure meat meet melody metal method middle might mile milk mind minute miss
modern moment money month moon more morning most mother motion mount mountain mouth move much
music must name nation nature near neck need never new next night nine noise noon nor north nose
note nothing notice now number object ocean off offer office often oil old once one only open
operate order other our out over own page paint pair paper park part party pass past path pay
people perhaps person pick picture piece place plain plan plane plant play please plural poem
point poor port pose post pound power practice press pretty print probable problem process produce
product proper protect proud prove pull push put quart question quick quiet quite race radio rain
raise ran range rather reach read ready real reason receive record red region remember repeat
reply rest result rich ride right ring rise river road rock roll room root rope rose round row rule
run safe said sail salt same sand sat save saw say scale school science score sea search season
seat second section see seed seem sell send sense sent serve set settle seven shape share sharp
she sheep shell shine ship shoe shop shore short should shoulder shout show side sight sign silent
silver simple since sing sister sit six size skill skin sky sleep slow small smell smile snow soft
soil soldier solve some son song soon sound south space speak special speed spell spend spot
spread spring square stand star start state station stay steam steel step stick still stone stood
stop store story straight strange stream street strong student study such sugar suit summer sun
supply sure surface swim system table tail take talk tall teach team tell ten test than thank that
the their them then there these thick thin thing think third this those though three through throw
tie time tiny tire together told tone too took tool top total touch toward town track trade train
travel tree triangle trip trouble truck true try tube turn twenty two type under unit until upon
use usual valley value very view village visit voice vowel wait walk wall want war warm wash watch
water wave way wear weather week weight well went were west what wheel when where which while white
who whole why wide wife wild will win wind window wing winter wire wish with woman wonder wood word
work world would write wrong yard year yellow yes yet you young your zero
"""

WORDS: tuple[str, ...] = tuple(sorted(set(_TEXT.split())))
"""The word list: sorted, unique, lower-case a-z, each at least 3 letters long."""
